#!/usr/bin/env bash
# The GPU checks, in one call on a CUDA machine without a package index (../shared/gpu/README.md):
#   bash ../shared/gpu/bundle.sh (with EXTRA_WHEELS="pytest pluggy iniconfig pytest-timeout"); cp ../shared/gpu/device-run.sh .whl/
#   device run, carry [".whl"]: bash .whl/device-run.sh bash benchmarks/gpu_check.sh
# Writes into $OUT: the NCCL collective tests, and the throughput benchmark on the GPU at the
# issue's size (16,384 rows, batch 256, teachers resnet18 x1.0, student x0.5).
set -u
OUT=${OUT:-$(mktemp -d)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/distributed/test_collectives.py 2>&1 | tail -5 | tee "$OUT/collectives.txt"
python3 benchmarks/throughput.py --device cuda --rows "${ROWS:-16384}" --batch-size 256 --teacher-width 1.0 --student-width 0.5 \
  > "$OUT/throughput_cuda.txt" 2> "$OUT/throughput_cuda.err"
echo "throughput exit $?"; cat "$OUT/throughput_cuda.txt"; grep -v "WARNING\|Token auth" "$OUT/throughput_cuda.err" | tail -30
