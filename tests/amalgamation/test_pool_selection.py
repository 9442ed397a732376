"""Choosing a job's teachers from a pool catalogue: pure logic, no Ray, no checkpoint files."""

from __future__ import annotations

import pytest

from ray_amalgam.amalgamation.pool import index_plan, resolve_pool_job, select_teachers
from ray_amalgam.io.catalogue import Candidate, read_catalogue, write_catalogue
from ray_amalgam.spec import BadInputError, Catalogue, CatalogueEntry, JobSpec, TaskSpec

TASKS = {
    "shape": TaskSpec(name="shape", kind="multiclass", classes=("circle", "square")),
    "color": TaskSpec(name="color", kind="multiclass", classes=("red", "green", "blue")),
    "size": TaskSpec(name="size", kind="multiclass", classes=("small", "large")),
    "tags": TaskSpec(name="tags", kind="multilabel", labels=("striped", "dotted")),
}


def entry(name: str, tasks: tuple[str, ...], params: int = 1000, quality: dict[str, float] | None = None, **extra) -> CatalogueEntry:
    return CatalogueEntry(
        name=name, url=f"/pool/{name}", status="ok", fingerprint=f"f-{name}", hash=f"h-{name}", arch="resnet18", width=0.25,
        small_input_stem=False, input_size=16, tasks=tuple(extra.pop("specs", None) or [TASKS[t] for t in tasks]),
        params=params, flops=params * 10, quality=quality or {}, **extra,
    )


def catalogue(*entries: CatalogueEntry) -> Catalogue:
    return Catalogue(prefix="/pool", entries=entries)


def test_minimal_cover_beats_one_teacher_per_task():
    pool = catalogue(
        entry("only_shape", ("shape",), params=10),
        entry("only_color", ("color",), params=10),
        entry("shape_color", ("shape", "color"), params=5000),
        entry("size", ("size",)),
    )
    chosen = select_teachers(pool, ["shape", "color", "size"], {}, "job.yaml")
    assert set(chosen.teachers) == {"shape_color", "size"}
    assert chosen.sources == {"shape": ("shape_color",), "color": ("shape_color",), "size": ("size",)}
    assert "the only owner" in chosen.reasons["size"]
    assert chosen.owners["shape"] == ("only_shape", "shape_color")


def test_best_owner_by_quality_then_by_size():
    pool = catalogue(
        entry("big_good", ("shape",), params=9000, quality={"shape": 0.95}),
        entry("small_worse", ("shape",), params=100, quality={"shape": 0.80}),
        entry("unmeasured", ("shape",), params=10),
        entry("color_a", ("color",), params=700),
        entry("color_b", ("color",), params=300),
    )
    chosen = select_teachers(pool, ["shape", "color"], {}, "job.yaml")
    assert chosen.sources["shape"] == ("big_good",), "a recorded quality wins over size"
    assert chosen.sources["color"] == ("color_b",), "with no quality, the smaller teacher"
    assert "best recorded quality" in chosen.reasons["shape"] and "of 3 owners" in chosen.reasons["shape"]
    assert "the smallest" in chosen.reasons["color"]


def test_all_runs_every_owner_and_a_named_owner_is_kept():
    pool = catalogue(entry("a", ("shape", "color")), entry("b", ("shape",)), entry("c", ("shape",)), entry("d", ("color",), params=1))
    chosen = select_teachers(pool, ["shape", "color"], {"shape": "all"}, "job.yaml")
    assert chosen.sources["shape"] == ("a", "b", "c")
    # color: 'a' is already in (it owns shape), so no fourth teacher joins for it.
    assert chosen.sources["color"] == ("a",) and set(chosen.teachers) == {"a", "b", "c"}
    assert "every owner (3)" in chosen.reasons["shape"]
    named = select_teachers(pool, ["color"], {"color": "d"}, "job.yaml")
    assert named.teachers == ("d",) and "named in task_teachers" in named.reasons["color"]


def test_refused_teachers_are_never_chosen():
    refused = CatalogueEntry(name="broken", url="/pool/broken", status="refused", reason="truncated", fingerprint="x")
    pool = catalogue(refused, entry("ok", ("shape",)))
    assert select_teachers(pool, ["shape"], {}, "job.yaml").teachers == ("ok",)
    with pytest.raises(BadInputError, match=r"job.yaml: task_teachers.shape: teacher 'broken' is refused in the catalogue \(truncated\)"):
        select_teachers(pool, ["shape"], {"shape": "broken"}, "job.yaml")


def test_conflicting_task_definitions_name_both_teachers():
    other_shape = TaskSpec(name="shape", kind="multiclass", classes=("circle", "triangle"))
    pool = catalogue(entry("first", ("shape",)), entry("second", (), specs=[other_shape]))
    with pytest.raises(BadInputError, match=r"job.yaml: pool: teachers 'first' and 'second' both define task 'shape' differently"):
        select_teachers(pool, ["shape"], {}, "job.yaml")


def test_unknown_task_lists_what_the_pool_offers():
    with pytest.raises(BadInputError, match=r"job.yaml: tasks: no accepted teacher of pool /pool owns task 'texture'; the pool offers \['shape'\]"):
        select_teachers(catalogue(entry("a", ("shape",))), ["texture"], {}, "job.yaml")


def test_greedy_cover_when_the_exact_search_is_too_large(monkeypatch):
    import ray_amalgam.amalgamation.pool as pool_module

    monkeypatch.setattr(pool_module, "MAX_COVER_COMBINATIONS", 1)
    pool = catalogue(entry("ab", ("shape", "color")), entry("a", ("shape",)), entry("c", ("size",)), entry("b", ("color",)))
    assert set(select_teachers(pool, ["shape", "color", "size"], {}, "job").teachers) == {"ab", "c"}


def test_pool_job_resolves_to_named_teachers(tmp_path):
    path = str(tmp_path / "cat.parquet")
    write_catalogue(path, catalogue(entry("a", ("shape", "color")), entry("b", ("tags",), quality={"tags": 0.5}), entry("c", ("tags",))))
    back = read_catalogue(path)
    assert back.entry("b").quality == {"tags": 0.5} and back.entry("a").tasks == (TASKS["shape"], TASKS["color"])
    job = JobSpec.model_validate({"pool": path, "tasks": ["color", "tags"], "data": {"train": "t", "eval": "e"}, "output": "o"})
    resolved, selection = resolve_pool_job(job, "job.yaml")
    assert [(r.name, r.checkpoint) for r in resolved.teachers] == [("a", "/pool/a"), ("b", "/pool/b")]
    assert resolved.pool is None and resolved.task_teachers == {"color": "a", "tags": "b"}
    assert selection is not None and selection.as_dict()["teachers"] == ["a", "b"]


def test_job_needs_teachers_or_pool_not_both():
    base = {"tasks": ["shape"], "data": {"train": "t", "eval": "e"}, "output": "o"}
    with pytest.raises(ValueError, match="either 'teachers'"):
        JobSpec.model_validate(base)
    with pytest.raises(ValueError, match="either 'teachers'"):
        JobSpec.model_validate({**base, "pool": "c", "teachers": [{"name": "a", "checkpoint": "x"}]})
    assert JobSpec.model_validate({**base, "pool": "c", "task_teachers": {"shape": "any_pool_name"}}).pool == "c"


def test_unchanged_listing_is_not_read_again():
    old = catalogue(entry("a", ("shape",)), entry("b", ("shape",)))
    candidates = [Candidate("a", "/pool/a", "f-a", False), Candidate("b", "/pool/b", "changed", False), Candidate("n", "/pool/n", "f-n", False)]
    kept, to_read = index_plan(candidates, old)
    assert [e.name for e in kept] == ["a"] and [c.name for c in to_read] == ["b", "n"]


def test_a_task_no_job_asks_for_may_be_defined_differently():
    from ray_amalgam.amalgamation import make_plan

    other_size = TaskSpec(name="size", kind="multiclass", classes=("tiny", "huge", "medium"))
    a = entry("a", ("shape", "size")).teacher_meta()
    b = entry("b", ("color",), specs=[TASKS["color"], other_size]).teacher_meta()
    job = JobSpec.model_validate({"teachers": [{"name": "a", "checkpoint": "x"}, {"name": "b", "checkpoint": "y"}],
                                  "tasks": ["shape", "color"], "data": {"train": "t", "eval": "e"}, "output": "o"})
    assert make_plan(job, {"a": a, "b": b}).sources == {"shape": ("a",), "color": ("b",)}
    with pytest.raises(BadInputError, match="both define task 'size' differently"):
        make_plan(job.model_copy(update={"tasks": ("shape", "size")}), {"a": a, "b": b})
