from ray_amalgam.amalgamation.validation import with_absolute_paths
from ray_amalgam.spec import JobSpec


def test_local_paths_become_absolute_and_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = JobSpec.model_validate({
        "teachers": [{"name": "A", "checkpoint": "teachers/A"}, {"name": "B", "checkpoint": "s3://bucket/B"}],
        "tasks": ["shape"],
        "data": {"train": "data/train", "eval": "gs://bucket/eval"},
        "output": "runs/one",
    })
    fixed = with_absolute_paths(job)
    assert [t.checkpoint for t in fixed.teachers] == [str(tmp_path / "teachers" / "A"), "s3://bucket/B"]
    assert fixed.data.train == str(tmp_path / "data" / "train") and fixed.data.eval == "gs://bucket/eval"
    assert fixed.output == str(tmp_path / "runs" / "one")
