#!/usr/bin/env bash
# The GPU checks, in one call on a CUDA machine without a package index (../shared/gpu/README.md):
#   bash ../shared/gpu/bundle.sh (with EXTRA_WHEELS="pytest pluggy iniconfig pytest-timeout"); cp ../shared/gpu/device-run.sh .whl/
#   device run, carry [".whl"]: bash .whl/device-run.sh bash benchmarks/gpu_check.sh
# Writes into $OUT: the NCCL collective tests, and the throughput benchmark on the GPU at the
# issue's size (16,384 rows, batch 256, teachers resnet18 x1.0, student x0.5). Each side's
# figures reach throughput_cuda.err as it finishes, so a run cut short by BENCH_TIMEOUT still
# shows what it measured.
set -u
OUT=${OUT:-$(mktemp -d)}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo "cpus $(nproc)"; } | tee "$OUT/gpu.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/distributed/test_collectives.py 2>&1 | tail -5 | tee "$OUT/collectives.txt"
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/throughput.py --json --device cuda --rows "${ROWS:-16384}" --batch-size 256 \
  --teacher-width 1.0 --student-width 0.5 > "$OUT/throughput_cuda.json" 2> "$OUT/throughput_cuda.err"
echo "throughput exit $?"
cat "$OUT/throughput_cuda.json"
grep -v "WARNING\|Token auth" "$OUT/throughput_cuda.err" | grep -E "^(ceiling|naive|local|ray_train_floor|stream|store): |Error|error|Traceback" | tail -30
# Ray Train's own account of each run's worker-group start (where the time before the first batch goes).
mkdir -p "$OUT/train_logs" && cp /tmp/ray/session_latest/logs/train/ray-train-sys-controller-*.log "$OUT/train_logs/" 2>/dev/null
