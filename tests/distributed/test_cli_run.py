"""`ray-amalgam run` as a person runs it: a real process joining the session's Ray."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from .conftest import job_dict

RAY_LINE = re.compile(r"WARNING|INFO|\(raylet\)|\(pid=|Token authentication|Progress bars")


@pytest.mark.timeout(300)
def test_run_shows_only_ray_amalgams_own_lines(ray_cluster, pool, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_dict(pool, tmp_path / "out")))
    done = subprocess.run(
        [sys.executable, "-m", "ray_amalgam.cli.main", "run", str(job), "--address", ray_cluster],
        capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert [line for line in done.stderr.splitlines() if RAY_LINE.search(line)] == []
    assert "shape" in done.stderr and "position" in done.stderr  # the result table is there
