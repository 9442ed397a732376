"""`--json`: stdout is exactly one JSON document on every path, whatever else writes to stdout."""

import json
import subprocess
import sys
import textwrap

import pytest

from ray_amalgam.cli.main import main
from ray_amalgam.io import synthesize

# The program as `ray-amalgam` runs it (main() with no argv), with `data inspect` made noisy the
# ways Ray is: Python prints and raw writes to fd 1 during the command, a child process that
# inherits fd 1, and prints from an exit hook registered during the command (Ray shuts down at
# interpreter exit and prints "(raylet) WARNING: ..." then, after the command has finished).
NOISY_PROGRAM = textwrap.dedent("""
    import atexit, os, subprocess, sys
    import ray_amalgam.cli.data as data
    from ray_amalgam.cli.main import main

    real_inspect = data.inspect_dataset

    def at_exit():
        print("(raylet) WARNING: 12 PYTHON worker processes have been started", flush=True)
        os.write(1, b"raw write at exit\\n")

    def noisy_inspect(url):
        print("print during the command")
        os.write(1, b"raw write during the command\\n")
        subprocess.run([sys.executable, "-c", "print('child process output')"], check=True)
        atexit.register(at_exit)
        return real_inspect(url)

    data.inspect_dataset = noisy_inspect
    sys.argv = ["ray-amalgam", *sys.argv[1:]]
    sys.exit(main())
""")
NOISE = ["(raylet) WARNING", "raw write at exit", "print during the command", "raw write during the command", "child process output"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("json") / "data")
    synthesize(url, num_samples=8, num_shards=2, seed=0, image_size=16)
    return url


def _program(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NOISY_PROGRAM, *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(150)
def test_stdout_is_one_json_document_despite_noise_during_the_command_and_at_exit(dataset):
    done = _program("data", "inspect", dataset, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 8
    for line in NOISE:
        assert line in done.stderr and line not in done.stdout


@pytest.mark.timeout(150)
def test_human_output_shows_only_ray_amalgams_own_lines(dataset):
    """Ray's driver-side lines (stdout) are dropped, during the command and at exit; the table stays."""
    done = _program("data", "inspect", dataset)
    assert done.returncode == 0, done.stderr
    assert "rows" in done.stderr  # the human table, on the stderr console
    for line in NOISE:
        assert line not in done.stdout and line not in done.stderr


@pytest.mark.timeout(150)
def test_debug_keeps_rays_lines(dataset):
    done = _program("data", "inspect", dataset, "--debug")
    assert done.returncode == 0 and "(raylet) WARNING" in done.stdout and "child process output" in done.stdout


@pytest.mark.timeout(150)
def test_a_failing_program_still_prints_one_json_document(tmp_path):
    done = _program("data", "inspect", str(tmp_path / "missing"), "--json")
    assert done.returncode == 2
    document = json.loads(done.stdout)
    assert document["exit_code"] == 2 and "missing/_dataset.json: not found" in document["error"]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing/_dataset.json: not found" in errors[0]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["data", "inspect", "/nonexistent/data", "--json"], 2, "/nonexistent/data/_dataset.json: not found"),
        (["data", "inspect", "--json"], 2, "the following arguments are required: url"),
        (["data", "synth", "--out", "/x", "--num-samples", "0", "--json"], 2, "--num-samples: expected a positive integer"),
    ],
)
def test_errors_under_json_are_the_json_document(capsys, argv, code, message):
    assert main(argv) == code
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["exit_code"] == code and message in document["error"]
    assert message in captured.err


def test_in_process_calls_get_their_stdout_back(capsys, dataset):
    assert main(["data", "inspect", dataset, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == 2
    print("after the command")
    assert capsys.readouterr().out == "after the command\n"
