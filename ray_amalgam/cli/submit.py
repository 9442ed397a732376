"""`ray-amalgam submit | jobs list|status|logs|stop`: amalgamation jobs and sweeps on a remote Ray
cluster through the Ray Jobs SDK (the head's dashboard, `http://HEAD:8265`).

A submission carries its spec in the job's runtime environment (`working_dir`: a directory holding
only the spec file) and, with `--ship-package`, this package (`py_modules`) for a cluster image
that lacks it; its entrypoint is the same `ray-amalgam run | sweep` a person runs, joining the
cluster it runs on (`--address auto`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from rich.markup import escape

import ray_amalgam
from ray_amalgam.amalgamation.validation import with_absolute_paths
from ray_amalgam.cli.console import console, print_json, print_table
from ray_amalgam.distributed.resources import check_reachable
from ray_amalgam.io.fs import read_text
from ray_amalgam.spec import BadInputError, JobSpec, load_spec_text
from ray_amalgam.spec.sweep import SweepSpec

KINDS = {"job": ("run", JobSpec), "sweep": ("sweep", SweepSpec)}
"""Spec kind -> the command that runs it and its model."""

METADATA_KEY = "ray_amalgam"
"""Job metadata key naming the kind of spec a submission carries (`jobs list` shows it)."""

TOKEN_FILE = Path.home() / ".ray" / "auth_token"
STATUS_POLL_S = 1.0
STOP_WAIT_S = 60.0
EXIT_OK, EXIT_FAILED = 0, 1


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=None,
        help="the cluster's Jobs API, http://HEAD:8265 (default: $RAY_ADDRESS when it is an http(s) URL)",
    )
    parser.add_argument(
        "--token-file", default=None,
        help="file holding the cluster's auth token (default: $RAY_AUTH_TOKEN, then $RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token)",
    )


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    submit = commands.add_parser("submit", help="submit a job or sweep spec to a Ray cluster (Ray Jobs API)", parents=[common])
    submit.add_argument("spec", help="job or sweep YAML file (which one is detected)")
    _connection(submit)
    submit.add_argument("--wait", action="store_true", help="wait for the job to end; exit with its status")
    submit.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit with its status")
    submit.add_argument("--resume", action="store_true", help="continue an earlier run of the same spec after its last finished stage")
    submit.add_argument(
        "--allow-local-paths", action="store_true",
        help="accept local paths in the spec (only for a directory every node mounts at the same place)",
    )
    submit.add_argument("--ship-package", action="store_true", help="upload this ray_amalgam package with the job (py_modules), for a cluster image without it")
    submit.add_argument("--submission-id", default=None, help="the job's id (default: one Ray makes up)")
    submit.set_defaults(handler=_submit)

    jobs = commands.add_parser("jobs", help="list, inspect, follow or stop jobs on a Ray cluster", parents=[common])
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(jobs))
    listing = actions.add_parser("list", help="every job the cluster knows", parents=[common])
    _connection(listing)
    listing.set_defaults(handler=_list)
    status = actions.add_parser("status", help="one job's status and details", parents=[common])
    status.add_argument("id", help="submission id")
    _connection(status)
    status.set_defaults(handler=_status)
    logs = actions.add_parser("logs", help="one job's logs", parents=[common])
    logs.add_argument("id", help="submission id")
    logs.add_argument("--follow", action="store_true", help="keep streaming until the job ends")
    _connection(logs)
    logs.set_defaults(handler=_logs)
    stop = actions.add_parser("stop", help="stop a running job (its stage checkpoints stay; submit --resume continues it)", parents=[common])
    stop.add_argument("id", help="submission id")
    stop.add_argument("--no-wait", action="store_true", help="return once the stop is requested")
    _connection(stop)
    stop.set_defaults(handler=_stop)


# --- the cluster connection --------------------------------------------------------------------


def _address(args: argparse.Namespace) -> str:
    address = args.address or os.environ.get("RAY_ADDRESS", "")
    if not address.startswith(("http://", "https://")):
        shown = f" (got {address!r})" if address else ""
        raise BadInputError(f"--address: expected the cluster's Jobs API URL, http://HEAD:8265{shown}")
    return address.rstrip("/")


def _token(args: argparse.Namespace) -> str | None:
    """The auth token: --token-file, else where Ray itself looks (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); None when there is none (a cluster without auth)."""
    if args.token_file is None and os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = args.token_file or os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path is None:
        return (TOKEN_FILE.read_text().strip() or None) if TOKEN_FILE.is_file() else None
    try:
        token = Path(path).read_text().strip()
    except OSError as error:
        raise BadInputError(f"--token-file {path}: cannot read it ({error.strerror or error})") from None
    if not token:
        raise BadInputError(f"--token-file {path}: the file is empty; expected the cluster's auth token")
    return token


@contextmanager
def _cluster_errors(address: str) -> Iterator[None]:
    """One line for what the Jobs SDK raises when the cluster is not there or refuses us."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as error:
        refused = "invalid or incorrect" in str(error) or "Forbidden" in str(error)
        problem = "refused the auth token" if refused else "requires an auth token and none was given"
        raise BadInputError(
            f"--address {address}: the cluster {problem}; give the token of its head "
            "(`ray get-auth-token` there) with --token-file, RAY_AUTH_TOKEN or ~/.ray/auth_token"
        ) from None
    except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout):
        raise BadInputError(f"--address {address}: no Ray Jobs API answers there (is the head's dashboard on that port?)") from None
    except RuntimeError as error:
        text = str(error)
        if "does not exist" in text:
            raise BadInputError(f"--address {address}: {text.split(': ', 1)[-1].rstrip('.').strip()}") from None
        raise


def _client(args: argparse.Namespace) -> tuple[Any, str]:
    from ray.job_submission import JobSubmissionClient

    address = _address(args)
    if not args.debug:  # the SDK logs each upload and websocket close at INFO
        for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
            logging.getLogger(name).setLevel(logging.WARNING)
    check_reachable(address)  # within seconds, where the SDK would wait on a dead host
    token = _token(args)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with _cluster_errors(address):
        return JobSubmissionClient(address, headers=headers), address


# --- the spec ---------------------------------------------------------------------------------


def detect_spec(path: str) -> tuple[str, JobSpec | SweepSpec]:
    """('job' or 'sweep', the validated spec): a sweep has a `base` job, a job does not."""
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None  # load_spec_text reports it, with the line
    kind = "sweep" if isinstance(data, dict) and "base" in data else "job"
    return kind, load_spec_text(KINDS[kind][1], text, path)


def _job_of(spec: JobSpec | SweepSpec) -> tuple[JobSpec, str]:
    return (spec.base, "base.") if isinstance(spec, SweepSpec) else (spec, "")


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith(("file://", "local://"))


def check_cluster_paths(path: str, spec: JobSpec | SweepSpec, allow_local: bool) -> JobSpec | SweepSpec:
    """Refuse URLs only this machine can see; with `allow_local` (a shared mount), make relative
    ones absolute, since the job runs in a directory of its own on the cluster."""
    job, prefix = _job_of(spec)
    fields = [(f"teachers[{i}].checkpoint", t.checkpoint) for i, t in enumerate(job.teachers)]
    fields += [("data.train", job.data.train), ("data.eval", job.data.eval), ("output", job.output)]
    local = [(name, url) for name, url in fields if _is_local(url)]
    if local and not allow_local:
        name, url = local[0]
        more = f" [+{len(local) - 1} more]" if len(local) > 1 else ""
        raise BadInputError(
            f"{path}: {prefix}{name}: '{url}' is a local path the cluster's nodes cannot see; expected an s3:// or gs:// URL "
            f"(or --allow-local-paths for a directory every node mounts at the same place){more}"
        )
    absolute = with_absolute_paths(job)
    return spec.model_copy(update={"base": absolute}) if isinstance(spec, SweepSpec) else absolute


def _entrypoint(kind: str, spec_name: str, resume: bool, ship_package: bool) -> str:
    # Without the package in the image there is no `ray-amalgam` script either: run the module.
    program = ["python", "-m", "ray_amalgam.cli.main"] if ship_package else ["ray-amalgam"]
    command = [*program, KINDS[kind][0], spec_name, "--address", "auto", *(["--resume"] if resume else [])]
    return shlex.join(command)


# --- commands ---------------------------------------------------------------------------------


def _submit(args: argparse.Namespace) -> int:
    kind, spec = detect_spec(args.spec)
    spec = check_cluster_paths(args.spec, spec, args.allow_local_paths)
    job, _ = _job_of(spec)
    client, address = _client(args)
    spec_name = Path(args.spec).name if args.spec.endswith((".yaml", ".yml", ".json")) else f"{kind}.yaml"
    entrypoint = _entrypoint(kind, spec_name, args.resume, args.ship_package)
    with tempfile.TemporaryDirectory(prefix="ray_amalgam_submit_") as directory:
        # The validated spec, with any relative path made absolute: JSON is YAML.
        data = spec.model_dump(mode="json", by_alias=True)
        (Path(directory) / spec_name).write_text(yaml.safe_dump(data, sort_keys=False))
        runtime_env: dict[str, Any] = {"working_dir": directory}
        if args.ship_package:
            runtime_env["py_modules"] = [os.path.dirname(ray_amalgam.__file__)]
            runtime_env["excludes"] = ["__pycache__", "*.pyc"]
        metadata = {METADATA_KEY: kind, "spec": args.spec, "output": job.output}
        with _cluster_errors(address):
            submission_id = client.submit_job(
                entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata, submission_id=args.submission_id,
            )
    summary: dict[str, Any] = {"submission_id": submission_id, "address": address, "kind": kind, "spec": args.spec,
                               "output": job.output, "entrypoint": entrypoint}
    console.print(f"submitted {kind} {args.spec} as [bold]{submission_id}[/bold] to {address}; output in {job.output}", soft_wrap=True)
    if not (args.wait or args.follow):
        summary["status"] = "PENDING"
        if args.json:
            print_json(summary)
        else:
            console.print(f"follow it with: ray-amalgam jobs logs {submission_id} --follow --address {address}", soft_wrap=True)
        return EXIT_OK
    return _until_done(client, address, submission_id, args.follow, args.json, summary)


def _until_done(client: Any, address: str, submission_id: str, follow: bool, as_json: bool, summary: dict[str, Any]) -> int:
    """Wait (streaming the logs with `follow`) until the job ends; its status decides the exit code."""
    try:
        with _cluster_errors(address):
            if follow:
                _stream_logs(client, submission_id)
            info = _wait_terminal(client, submission_id, timeout=None)
    except KeyboardInterrupt:
        console.print(f"stopped waiting; job {submission_id} keeps running (ray-amalgam jobs stop {submission_id} --address {address})")
        raise
    return _finish(info, as_json, {**summary, **_info_dict(info)})


def _stream_logs(client: Any, submission_id: str) -> None:
    async def tail() -> None:
        async for lines in client.tail_job_logs(submission_id):
            sys.stderr.write(lines)
            sys.stderr.flush()

    asyncio.run(tail())


def _wait_terminal(client: Any, submission_id: str, timeout: float | None) -> Any:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = client.get_job_info(submission_id)
        if info.status.is_terminal() or (deadline is not None and time.monotonic() > deadline):
            return info
        time.sleep(STATUS_POLL_S)


def _info_dict(info: Any) -> dict[str, Any]:
    metadata = info.metadata or {}
    return {
        "submission_id": info.submission_id,
        "status": str(info.status.value if hasattr(info.status, "value") else info.status),
        "message": info.message,
        "kind": metadata.get(METADATA_KEY),
        "spec": metadata.get("spec"),
        "output": metadata.get("output"),
        "entrypoint": info.entrypoint,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "driver_exit_code": info.driver_exit_code,
    }


def _finish(info: Any, as_json: bool, summary: dict[str, Any]) -> int:
    """The job's end as the command's: SUCCEEDED 0; STOPPED 1; FAILED its driver's code (2 for a
    spec the cluster found bad) or 1; each with one line saying so."""
    status, sid = summary["status"], summary["submission_id"]
    if status == "SUCCEEDED":
        code, line = EXIT_OK, f"job {sid} SUCCEEDED; output in {summary['output']}"
    elif status == "STOPPED":
        code = EXIT_FAILED
        line = f"job {sid} was STOPPED before it finished; `ray-amalgam submit {summary['spec']} --resume --address {summary['address']}` continues it after its last finished stage"
    else:
        code = info.driver_exit_code if info.driver_exit_code in (1, 2) else EXIT_FAILED
        last = (info.message or "").strip().splitlines()
        line = f"job {sid} {status}: {last[-1] if last else 'no message'} (ray-amalgam jobs logs {sid} shows why)"
    summary["exit_code"] = code
    if as_json:
        print_json(summary)
    console.print(f"[green]{escape(line)}[/green]" if code == EXIT_OK else f"[red]failed:[/red] {escape(line)}", soft_wrap=True)
    return code


def _list(args: argparse.Namespace) -> int:
    client, address = _client(args)
    with _cluster_errors(address):
        jobs = sorted((_info_dict(j) for j in client.list_jobs()), key=lambda j: j["start_time"] or 0)
    if args.json:
        print_json({"address": address, "jobs": jobs})
        return EXIT_OK
    print_table(f"jobs on {address}", ["submission id", "status", "kind", "spec", "started", "output"], [
        [j["submission_id"] or "-", j["status"], j["kind"] or "-", j["spec"] or j["entrypoint"], _when(j["start_time"]), j["output"] or "-"]
        for j in jobs
    ])
    return EXIT_OK


def _when(milliseconds: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(milliseconds / 1000)) if milliseconds else "-"


def _status(args: argparse.Namespace) -> int:
    client, address = _client(args)
    with _cluster_errors(address):
        info = _info_dict(client.get_job_info(args.id))
    if args.json:
        print_json({"address": address, **info})
        return EXIT_OK
    print_table(f"job {args.id} on {address}", ["field", "value"], [
        ["status", info["status"]], ["kind", info["kind"] or "-"], ["spec", info["spec"] or "-"], ["output", info["output"] or "-"],
        ["entrypoint", info["entrypoint"]], ["started", _when(info["start_time"])], ["ended", _when(info["end_time"])],
        ["driver exit code", "-" if info["driver_exit_code"] is None else info["driver_exit_code"]],
        ["message", (info["message"] or "-").strip().splitlines()[-1] if info["message"] else "-"],
    ])
    return EXIT_OK


def _logs(args: argparse.Namespace) -> int:
    client, address = _client(args)
    with _cluster_errors(address):
        if args.follow:
            _stream_logs(client, args.id)
            text = None
        else:
            text = client.get_job_logs(args.id)
    if args.json:
        print_json({"address": address, "submission_id": args.id, "logs": text})
    elif text is not None:
        sys.stderr.write(text)
    return EXIT_OK


def _stop(args: argparse.Namespace) -> int:
    client, address = _client(args)
    with _cluster_errors(address):
        requested = client.stop_job(args.id)
        info = client.get_job_info(args.id) if args.no_wait else _wait_terminal(client, args.id, STOP_WAIT_S)
    summary = {"address": address, "stop_requested": requested, **_info_dict(info)}
    if args.json:
        print_json(summary)
    if not requested:
        console.print(f"job {args.id} had already ended ({summary['status']}); nothing to stop")
    else:
        console.print(f"job {args.id}: stop requested; status now {summary['status']}")
    return EXIT_OK
