"""`ray-amalgam pool synth | index | show` and `teachers evaluate` in this process, without Ray."""

from __future__ import annotations

import json

from ray_amalgam.cli.main import main
from ray_amalgam.io import synthesize


def _json(capsys, argv: list[str]) -> tuple[int, dict]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_synth_index_evaluate_show(tmp_path, capsys):
    pool, catalogue = tmp_path / "pool", tmp_path / "cat.parquet"
    assert _json(capsys, ["pool", "synth", "--out", str(pool), "--teachers", "4"])[0] == 0
    code, index = _json(capsys, ["pool", "index", str(pool), "--out", str(catalogue), "--no-ray"])
    assert code == 0 and index["accepted"] == 4 and not index["ray"] and len(index["read"]) == 4
    synthesize(str(tmp_path / "labelled"), 32, 1, seed=3, image_size=16)
    code, evaluated = _json(capsys, ["teachers", "evaluate", "--catalogue", str(catalogue), "--data", str(tmp_path / "labelled")])
    assert code == 0 and set(evaluated["quality"]["teacher_00"]) == {"shape", "color"}
    code, shown = _json(capsys, ["pool", "show", str(catalogue), "--task", "shape"])
    owners = shown["teachers"]
    figures = [t["quality"]["shape"] for t in owners]
    assert code == 0 and len(owners) >= 2 and figures == sorted(figures, reverse=True), "best owner first"
    assert all("shape" in t["tasks"] and t["quality"]["shape"] == evaluated["quality"][t["name"]]["shape"] for t in owners)
    # The quality figures survive a re-index (nothing changed: nothing read).
    code, again = _json(capsys, ["pool", "index", str(pool), "--out", str(catalogue), "--no-ray"])
    assert again["read"] == [] and again["unchanged"] == 4
    assert _json(capsys, ["pool", "show", str(catalogue)])[1]["teachers"][0]["quality"] == evaluated["quality"]["teacher_00"]


def test_bad_pool_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["pool", "index", str(tmp_path / "missing")]) == 2
    assert "missing: no such directory or prefix" in capsys.readouterr().err
    (tmp_path / "not.parquet").write_text("hello")
    code, error = _json(capsys, ["pool", "show", str(tmp_path / "not.parquet")])
    assert code == 2 and error["error"].startswith(f"{tmp_path / 'not.parquet'}: not a pool catalogue")
