"""`ray-amalgam export`: each format round-trips a tiny student with parity, carries its metadata,
runs at any batch size when dynamic; bad input exits 2 with one line; low agreement is refused."""

import json
import sys
from pathlib import Path

import pytest
import torch

from ray_amalgam.amalgamation.export import compare, load_exported, parity_inputs, reference_model, verdict
from ray_amalgam.amalgamation.student import load_student, save_student
from ray_amalgam.cli.main import main
from ray_amalgam.io.checkpoints import checkpoint_hash, save_teacher
from ray_amalgam.io.synth import synthesize
from ray_amalgam.models import build_targetnet, build_teacher
from ray_amalgam.spec import BackboneSpec, BranchSpec, StudentMeta, TaskSpec, TeacherMeta

TINY = BackboneSpec(arch="resnet18", width=0.125)
COLOR = TaskSpec(name="color", kind="multiclass", classes=("red", "yellow", "green", "cyan", "blue", "magenta"))
ATTRIBUTES = TaskSpec(name="attributes", kind="multilabel", labels=("striped", "dotted", "outlined", "shadowed"))
FORMATS = ["exported-program", "onnx", "torchscript"]


def make_teacher(url: str, seed: int) -> str:
    torch.manual_seed(seed)
    meta = TeacherMeta(backbone=TINY, tasks=(COLOR,), input_size=32)
    save_teacher(url, build_teacher(meta).state_dict(), meta)
    return url


@pytest.fixture(scope="module")
def teacher_url(tmp_path_factory) -> str:
    return make_teacher(str(tmp_path_factory.mktemp("export_teacher") / "teacher"), seed=1)


@pytest.fixture(scope="module")
def student_url(tmp_path_factory, teacher_url) -> str:
    """An untrained student (trained weights are not what export checks) with one task of each kind,
    branching at different trunk blocks; made from teacher A (`teacher_url`) and a teacher B
    whose checkpoint nobody has."""
    torch.manual_seed(0)
    meta = StudentMeta(
        backbone=TINY, input_size=32, source_teachers={"A": checkpoint_hash(teacher_url), "B": "0" * 64},
        branches=(
            BranchSpec(task=COLOR, teacher="A", teacher_backbone=TINY, branch_point=2, teacher_block=2),
            BranchSpec(task=ATTRIBUTES, teacher="A", teacher_backbone=TINY, branch_point=3, teacher_block=3),
        ),
    )
    url = str(tmp_path_factory.mktemp("export") / "student")
    save_student(url, build_targetnet(meta), meta)
    return url


def export(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main(["export", *argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def onnx_or_skip(fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra (pip install '.[onnx]')")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.timeout(120)
def test_each_format_round_trips_with_parity_metadata_and_dynamic_batch(capsys, student_url, tmp_path, fmt):
    onnx_or_skip(fmt)
    out = tmp_path / f"student.{fmt}"
    code, summary, _ = export(capsys, "--student", student_url, "--format", fmt, "--out", str(out))
    assert code == 0 and summary["kept"] and summary["rows_compared"] == 64
    for row in summary["parity"].values():
        assert row["agreement"] == 1.0 and row["max_abs_diff"] < 1e-4
    assert set(summary["latency_ms"]) == {"student (PyTorch, fp32)", f"{fmt} (fp32)"}
    assert all(set(times) == {"1", "64"} for times in summary["latency_ms"].values())

    model, manifest = load_exported(out.read_bytes(), fmt)
    sidecar = json.loads(Path(summary["sidecar"]).read_text())
    assert manifest == sidecar and summary["sidecar"] == f"{out}.json"
    assert [o["name"] for o in manifest["outputs"]] == ["color", "attributes"]
    assert manifest["outputs"][0]["classes"] == list(COLOR.classes)
    assert manifest["outputs"][1]["labels"] == list(ATTRIBUTES.labels)
    assert manifest["input"]["shape"] == ["batch", 3, 32, 32] and manifest["input"]["channel_order"] == "RGB"

    meta, student = load_student(student_url)
    assert manifest["input"]["mean"] == list(meta.mean) and manifest["input"]["std"] == list(meta.std)
    for batch in (1, 5):
        images = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            expected, got = student(images), model(images)
        for task in ("color", "attributes"):
            assert torch.allclose(got[task], expected[task], atol=1e-4)


@pytest.mark.timeout(120)
def test_onnx_metadata_props_and_output_names_read_without_ray_amalgam(capsys, student_url, tmp_path):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx extra (pip install '.[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra (pip install '.[onnx]')")
    out = tmp_path / "student.onnx"
    # --force: this untrained student's multilabel logits sit near 0, where fp16 flips a few
    # decisions on random inputs (99.6% here with onnxruntime 1.32); parity has its own tests.
    assert export(capsys, "--student", student_url, "--format", "onnx", "--out", str(out), "--dtype", "fp16", "--force")[0] == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    manifest = json.loads(props["ray_amalgam.json"])
    assert manifest["dtype"] == "fp16" and manifest["outputs"][0]["classes"] == list(COLOR.classes)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["color", "attributes"]
    color, attributes = session.run(None, {"image": torch.randn(3, 3, 32, 32).numpy()})
    assert color.shape == (3, 6) and attributes.shape == (3, 4) and color.dtype.name == "float32"


@pytest.mark.timeout(120)
def test_reduced_precision_is_checked_at_its_dtype_and_reported_against_fp32(capsys, student_url, tmp_path):
    code, summary, _ = export(capsys, "--student", student_url, "--format", "exported-program", "--dtype", "bf16",
                              "--out", str(tmp_path / "bf16.pt2"))
    assert code == 0
    for row in summary["parity"].values():
        assert row["agreement"] == 1.0
        assert 0.0 <= row["fp32_agreement"] <= 1.0 and row["fp32_max_abs_diff"] > 0.0


@pytest.mark.timeout(120)
def test_fixed_batch_and_eval_data(capsys, student_url, tmp_path):
    data = str(tmp_path / "eval")
    synthesize(data, num_samples=8, num_shards=1, seed=0)
    out = tmp_path / "fixed.pt2"
    code, summary, _ = export(capsys, "--student", student_url, "--format", "exported-program", "--batch", "4",
                              "--data", data, "--out", str(out))
    assert code == 0 and summary["rows_compared"] == 4 and summary["batch"] == 4
    assert all(set(times) == {"4"} for times in summary["latency_ms"].values())
    model, manifest = load_exported(out.read_bytes(), "exported-program")
    assert manifest["input"]["shape"] == [4, 3, 32, 32] and model(torch.randn(4, 3, 32, 32))["color"].shape == (4, 6)


def test_human_output_shows_parity_and_latency_tables(capsys, student_url, tmp_path):
    out = tmp_path / "student.pt"
    assert main(["export", "--student", student_url, "--format", "torchscript", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "parity with the student" in captured.err and "CPU latency" in captured.err and "batch 64" in captured.err


def test_compare_teachers_times_the_given_source_teacher(capsys, student_url, teacher_url, tmp_path):
    code, summary, _ = export(capsys, "--student", student_url, "--format", "torchscript", "--out", str(tmp_path / "s.pt"),
                              "--compare-teachers", "--teacher", teacher_url)
    assert code == 0 and summary["teachers_not_given"] == ["B"]
    assert set(summary["latency_ms"]["teacher A (PyTorch, fp32)"]) == {"1", "64"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "safetensors"], "argument --format: invalid choice: 'safetensors'"),
        (["--format", "torchscript", "--batch", "0"], "argument --batch: expected 'dynamic' or a positive integer, got 0"),
        (["--format", "torchscript", "--batch", "many"], "argument --batch: expected 'dynamic' or a positive integer, got many"),
        (["--format", "torchscript", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["--format", "onnx", "--dtype", "bf16"], "--dtype bf16: ONNX Conv has no bfloat16 type"),
        (["--format", "torchscript", "--compare-teachers"], "pass --teacher URL for each"),
        (["--format", "torchscript", "--teacher", "OTHER"], "--teacher OTHER: not a teacher this student was made from"),
        (["--format", "torchscript", "--data", "NOWHERE"], "NOWHERE"),
    ],
)
@pytest.mark.timeout(60)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, student_url, tmp_path_factory, tmp_path, argv, message):
    paths = {"OTHER": make_teacher(str(tmp_path_factory.mktemp("other") / "teacher"), seed=2), "NOWHERE": str(tmp_path / "nowhere")}
    for placeholder, path in paths.items():
        argv, message = [a.replace(placeholder, path) for a in argv], message.replace(placeholder, path)
    out = tmp_path / "model"
    assert main(["export", "--student", student_url, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_teacher_given_as_the_student_exits_2_naming_it(capsys, teacher_url, tmp_path):
    code, summary, err = export(capsys, "--student", teacher_url, "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and summary["exit_code"] == 2
    assert summary["error"] == f"{teacher_url}: a teacher checkpoint (teacher.json), not a student; expected a directory with student.json"
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_onnx_without_the_extra_names_the_extra(capsys, monkeypatch, student_url, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: import raises ImportError
    code, summary, _ = export(capsys, "--student", student_url, "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and "pip install 'ray_amalgam[onnx]'" in summary["error"] and "onnxruntime" in summary["error"]


def test_low_agreement_is_refused_unless_forced(student_url):
    """A model that disagrees with the student (its color head negated) fails the check that decides."""
    meta, student = load_student(student_url)
    broken = reference_model(student, "fp32")
    with torch.no_grad():
        broken.student.branches["color"].head.fc.weight.neg_()
        broken.student.branches["color"].head.fc.bias.neg_()
    images = parity_inputs(meta, None, 64)
    report = compare(reference_model(student, "fp32"), broken, images, meta.tasks)
    assert report["color"]["agreement"] < 0.5 and report["attributes"]["agreement"] == 1.0
    keep, shortfall = verdict(report, force=False)
    assert not keep and shortfall.startswith("agreement with the student below 99.9% (color ")
    assert verdict(report, force=True) == (True, shortfall)
    assert verdict(compare(broken, broken, images, meta.tasks), force=False) == (True, None)
