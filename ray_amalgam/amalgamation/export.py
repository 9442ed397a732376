"""Export a student to a deployable file (torch.export, ONNX, TorchScript), check its parity with
the student and time both. Pure PyTorch; onnx and onnxruntime are imported only for `onnx`.

Every exported model has the same interface, whatever its dtype: input `image`, float32
(N, 3, H, W) RGB scaled to [0, 1] then normalized with the student's mean/std; outputs named after
the tasks, float32 logits (softmax for multiclass, sigmoid for multilabel). An fp16/bf16 export
casts inside the graph, so callers never change their preprocessing.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ray_amalgam import __version__
from ray_amalgam.amalgamation.metrics import cpu_latency_ms, fidelity_matches
from ray_amalgam.amalgamation.student import iter_image_batches
from ray_amalgam.io.fs import atomic_write_bytes, atomic_write_text
from ray_amalgam.models import TargetNet
from ray_amalgam.spec import BadInputError, StudentMeta, TaskSpec

EXPORT_FORMATS = ("exported-program", "onnx", "torchscript")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXPORT_FORMAT_VERSION = 1
METADATA_KEY = "ray_amalgam.json"
"""Name of the export manifest inside the file: an ONNX metadata_props key, a torch.export /
TorchScript extra file. The same JSON document lies beside the file as `<out>.json`."""
INPUT_NAME = "image"
MIN_AGREEMENT = 0.999
LATENCY_BATCHES = (1, 64)

Forward = Callable[[Tensor], dict[str, Tensor]]


class _Deployable(nn.Module):
    """The student behind the exported interface: float32 in, float32 logits out, computed in `dtype`."""

    def __init__(self, student: TargetNet, dtype: torch.dtype) -> None:
        super().__init__()
        self.student = copy.deepcopy(student).to(dtype)
        self.dtype = dtype
        self.eval()

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        return {task: logits.float() for task, logits in self.student(image.to(self.dtype)).items()}


@dataclass(frozen=True)
class Exported:
    """The serialized file, its manifest, and the model loaded back from exactly those bytes."""

    data: bytes
    manifest: dict[str, Any]
    model: Forward


def sidecar_url(out_url: str) -> str:
    """Where the JSON manifest lies beside an exported file."""
    return f"{out_url}.json"


def _task_manifest(task: TaskSpec) -> dict[str, Any]:
    names = {"classes": list(task.classes)} if task.kind == "multiclass" else {"labels": list(task.labels)}
    decision = (
        {"activation": "softmax", "prediction": "argmax"}
        if task.kind == "multiclass"
        else {"activation": "sigmoid", "prediction": "every label with probability > 0.5"}
    )
    return {"name": task.name, "kind": task.kind, **names, **decision}


def export_manifest(meta: StudentMeta, fmt: str, batch: int | None, dtype: str, student_url: str) -> dict[str, Any]:
    """What a deployment needs besides the graph: preprocessing, output names and class/label names."""
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "exporter": f"ray_amalgam {__version__}, torch {torch.__version__}",
        "format": fmt,
        "dtype": dtype,
        "batch": "dynamic" if batch is None else batch,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch" if batch is None else batch, 3, meta.input_size, meta.input_size],
            "dtype": "float32",
            "layout": "NCHW",
            "channel_order": "RGB",
            "preprocessing": "pixel / 255, then (x - mean) / std per channel",
            "mean": list(meta.mean),
            "std": list(meta.std),
        },
        "outputs": [_task_manifest(task) for task in meta.tasks],
        "student": {"checkpoint": student_url, "backbone": meta.backbone.model_dump(mode="json"),
                    "source_teachers": dict(meta.source_teachers)},
    }


def _check_options(fmt: str, dtype: str) -> None:
    """Refuse what a format cannot hold, before any work."""
    if fmt not in EXPORT_FORMATS:
        raise BadInputError(f"--format {fmt}: unknown; expected one of {', '.join(EXPORT_FORMATS)}")
    if dtype not in DTYPES:
        raise BadInputError(f"--dtype {dtype}: unknown; expected one of {', '.join(DTYPES)}")
    if fmt == "onnx" and dtype == "bf16":
        raise BadInputError("--dtype bf16: ONNX Conv has no bfloat16 type (onnxruntime refuses the graph); use fp16 or fp32 with --format onnx")


def _onnxruntime() -> Any:
    """onnxruntime, once onnx (which torch.onnx.export writes with) is known to be there too."""
    try:
        import onnx  # noqa: F401 - imported for the check only
        import onnxruntime
    except ImportError as error:
        raise BadInputError(
            f"--format onnx needs the onnx extra: pip install 'ray_amalgam[onnx]' ({error.name or error} is not installed)"
        ) from None
    return onnxruntime


@contextmanager
def _torchscript_quietly() -> Iterator[None]:
    """torch.jit warns on every call that it is deprecated; the user asked for TorchScript on purpose
    (the README says it is deprecated upstream), so one command would print the same warning thrice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def _serialize(model: _Deployable, fmt: str, example: Tensor, dynamic: bool, manifest_text: str) -> bytes:
    buffer = io.BytesIO()
    # torch.export specializes sizes 0 and 1, so the dynamic example batch is 2 and the Dim starts at 1.
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    if fmt == "exported-program":
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
        torch.export.save(program, buffer, extra_files={METADATA_KEY: manifest_text})
    elif fmt == "torchscript":
        # A trace of this convolutional graph has no batch-size branch: it runs at any batch.
        with _torchscript_quietly():
            torch.jit.save(torch.jit.trace(model, example, strict=False), buffer, _extra_files={METADATA_KEY: manifest_text})
    else:
        names = list(model(example))  # the task names, in the order the outputs come
        program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=names,
                                    dynamic_shapes=shapes, dynamo=True, verbose=False)
        proto = program.model_proto
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, manifest_text
        return proto.SerializeToString()
    return buffer.getvalue()


def load_exported(data: bytes, fmt: str) -> tuple[Forward, dict[str, Any]]:
    """An exported file's model, as a function of float32 images to per-task logits, and its manifest;
    read with each format's own loader, as a deployment would."""
    if fmt == "onnx":
        session = _onnxruntime().InferenceSession(data, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]

        def run_onnx(images: Tensor) -> dict[str, Tensor]:
            outputs = session.run(names, {INPUT_NAME: images.numpy()})
            return {name: torch.from_numpy(values) for name, values in zip(names, outputs)}

        return run_onnx, json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    extra = {METADATA_KEY: ""}
    if fmt == "exported-program":
        model = torch.export.load(io.BytesIO(data), extra_files=extra).module()
    else:
        with _torchscript_quietly():
            model = torch.jit.load(io.BytesIO(data), _extra_files=extra)
    return model, json.loads(extra[METADATA_KEY])


def export_student(student: TargetNet, meta: StudentMeta, fmt: str, batch: int | None, dtype: str, student_url: str) -> Exported:
    """Serialize `student` in format `fmt` (`batch` None: any batch size) and load it back from the bytes."""
    _check_options(fmt, dtype)
    if fmt == "onnx":
        _onnxruntime()
    manifest = export_manifest(meta, fmt, batch, dtype, student_url)
    example = torch.randn(2 if batch is None else batch, 3, meta.input_size, meta.input_size)
    with torch.no_grad():
        data = _serialize(_Deployable(student, DTYPES[dtype]), fmt, example, batch is None, json.dumps(manifest, sort_keys=True))
    model, _ = load_exported(data, fmt)
    return Exported(data, manifest, model)


def reference_model(student: TargetNet, dtype: str) -> Forward:
    """The student in eager PyTorch, with the exported interface, computing in `dtype`."""
    return _Deployable(student, DTYPES[dtype])


def parity_inputs(meta: StudentMeta, data_url: str | None, count: int, exactly: bool = False, seed: int = 0) -> Tensor:
    """Up to `count` (with `exactly`, `count`) preprocessed images from dataset `data_url`, or
    `count` standard normal inputs without data."""
    if data_url is None:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(count, 3, meta.input_size, meta.input_size, generator=generator)
    _, images = next(iter_image_batches(meta, data_url, count))
    if exactly and len(images) < count:
        raise BadInputError(f"--data {data_url}: {len(images)} rows, the export's fixed batch needs {count}")
    return images


@torch.inference_mode()
def compare(reference: Forward, exported: Forward, images: Tensor, tasks: Sequence[TaskSpec]) -> dict[str, dict[str, float]]:
    """Per task: max |logit difference| and agreement of the exported model's predictions with the
    reference's (top-1 for multiclass; per label at probability 0.5 for multilabel)."""
    expected, got = reference(images), exported(images)
    report = {}
    for task in tasks:
        a, b = expected[task.name].float(), got[task.name].float()
        report[task.name] = {
            "max_abs_diff": float((a - b).abs().max()),
            "agreement": float(fidelity_matches(b, a, task.kind).mean()),
        }
    return report


def parity(student: TargetNet, exported: Exported, images: Tensor, tasks: Sequence[TaskSpec]) -> dict[str, dict[str, float]]:
    """`compare` the exported model with the student run eagerly at the export's dtype: that checks
    the export itself. A reduced-precision export also reports `fp32_max_abs_diff` and
    `fp32_agreement` against the fp32 student, which measure the precision choice, not the export."""
    dtype = exported.manifest["dtype"]
    report = compare(reference_model(student, dtype), exported.model, images, tasks)
    if dtype != "fp32":
        for task, row in compare(reference_model(student, "fp32"), exported.model, images, tasks).items():
            report[task].update({f"fp32_{key}": value for key, value in row.items()})
    return report


def verdict(report: Mapping[str, Mapping[str, float]], force: bool, min_agreement: float = MIN_AGREEMENT) -> tuple[bool, str | None]:
    """Whether to keep an export, and what fell short: every task's agreement must reach
    `min_agreement`, unless `force`."""
    below = [f"{task} {row['agreement']:.2%}" for task, row in report.items() if row["agreement"] < min_agreement]
    if not below:
        return True, None
    return force, f"agreement with the student below {min_agreement:.1%} ({', '.join(below)})"


def latency_ms(models: Mapping[str, Callable[[Tensor], object]], input_size: int, batches: Sequence[int],
               repeats: int = 5) -> dict[str, dict[int, float]]:
    """Median CPU milliseconds per batch, for each model and batch size."""
    return {
        name: {b: cpu_latency_ms(forward, input_size, batch_size=b, repeats=repeats) * b for b in batches}
        for name, forward in models.items()
    }


def write_export(out_url: str, exported: Exported) -> str:
    """Write the file and its JSON sidecar, each atomically; returns the sidecar's URL."""
    atomic_write_bytes(out_url, exported.data)
    sidecar = sidecar_url(out_url)
    atomic_write_text(sidecar, json.dumps(exported.manifest, indent=2, sort_keys=True) + "\n")
    return sidecar
