"""A real multi-node Ray on loopback: a head (with the dashboard, for the Jobs API) and one worker
node, each a `ray start --block` process on its own ports, with token authentication on.

Never `ray stop`: it kills every Ray process on the machine by name, other sessions' included.
Each `ray start --block` runs in a session (process group) of its own, which the Ray processes it
starts (GCS, raylet, dashboard, workers) inherit, so teardown ends exactly those groups by id:
SIGTERM (Ray's own graceful shutdown), then SIGKILL for anything left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


def _ray_executable() -> str:
    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else shutil.which("ray") or "ray"


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago (held open together so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _node_ports(head: bool) -> list[str]:
    names = ["--node-manager-port", "--object-manager-port", "--metrics-export-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
    if head:
        names += ["--ray-client-server-port"]
    ports = free_ports(len(names))
    args = [f"{name}={port}" for name, port in zip(names, ports)]
    low = ports[0] % 1000 * 20 + 30000  # a worker-port range of its own
    return args + [f"--min-worker-port={low}", f"--max-worker-port={low + 19}"]


@dataclass
class MultiNodeCluster:
    """Handles on the running cluster: the GCS address, the dashboard (Jobs API) URL, the token."""

    gcs_address: str
    dashboard_url: str
    token: str
    env: dict[str, str]
    """What a client process needs (the token, no RAY_ADDRESS)."""
    temp_dir: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for process in reversed(self.processes):
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)  # anything of the group still there
            except ProcessLookupError:
                pass
            process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class NodeStartError(RuntimeError):
    """A `ray start` exited: most often a port chosen free was taken before Ray bound it."""


START_ATTEMPTS = 3


def _wait_for(predicate, what: str, timeout: float, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for process in processes:
            if process.poll() is not None:
                raise NodeStartError(f"{what}: `ray start` exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.5)


def _nodes_alive(url: str, token: str) -> int:
    import requests

    try:
        reply = requests.get(f"{url}/nodes?view=summary", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        summary = reply.json()["data"]["summary"]
    except Exception:  # noqa: BLE001 - not up yet
        return 0
    return sum(1 for node in summary if node.get("raylet", {}).get("state") == "ALIVE")


def start_cluster(
    head_cpus: float, head_resources: dict[str, float], worker_cpus: float, worker_resources: dict[str, float],
    extra_env: dict[str, str] | None = None, object_store_bytes: int = 150 * 2**20, timeout: float = 120,
) -> MultiNodeCluster:
    """Start the head, then the worker node; return once both are alive in the dashboard. A node
    whose `ray start` exits is tried again on fresh ports (a whole new cluster), at most
    START_ATTEMPTS times; the last failure carries the end of Ray's start log."""
    arguments = (head_cpus, head_resources, worker_cpus, worker_resources, extra_env, object_store_bytes, timeout)
    for _ in range(START_ATTEMPTS - 1):
        try:
            return _start_once(*arguments)
        except NodeStartError:
            continue
    return _start_once(*arguments)


def _start_once(
    head_cpus: float, head_resources: dict[str, float], worker_cpus: float, worker_resources: dict[str, float],
    extra_env: dict[str, str] | None, object_store_bytes: int, timeout: float,
) -> MultiNodeCluster:
    temp_dir = tempfile.mkdtemp(prefix="ra_mn_", dir="/tmp")  # short: Ray's unix sockets live under it
    token = uuid.uuid4().hex + uuid.uuid4().hex
    # Entry points run with the nodes' environment: this interpreter's scripts come first on PATH.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, **(extra_env or {}), "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port = free_ports(2)
    gcs = f"127.0.0.1:{gcs_port}"
    url = f"http://127.0.0.1:{dashboard_port}"
    common = ["--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", f"--object-store-memory={object_store_bytes}"]
    head = [_ray_executable(), "start", "--head", f"--port={gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}", f"--num-cpus={head_cpus:g}",
            f"--resources={json.dumps(head_resources)}", *common, *_node_ports(head=True)]
    worker = [_ray_executable(), "start", f"--address={gcs}", f"--num-cpus={worker_cpus:g}",
              f"--resources={json.dumps(worker_resources)}", *common, *_node_ports(head=False)]
    log = open(os.path.join(temp_dir, "ray_start.log"), "ab")  # noqa: SIM115 - lives as long as the processes
    cluster = MultiNodeCluster(gcs, url, token, {"RAY_AUTH_TOKEN": token}, temp_dir)
    try:
        cluster.processes.append(subprocess.Popen(head, env=env, stdout=log, stderr=log, start_new_session=True))
        _wait_for(lambda: _nodes_alive(url, token) >= 1, "the head node", timeout, cluster.processes)
        cluster.processes.append(subprocess.Popen(worker, env=env, stdout=log, stderr=log, start_new_session=True))
        _wait_for(lambda: _nodes_alive(url, token) >= 2, "the worker node", timeout, cluster.processes)
    except NodeStartError as error:
        log.flush()
        tail = Path(temp_dir, "ray_start.log").read_text(errors="replace")[-2000:]
        cluster.stop()
        raise NodeStartError(f"{error}; ray start's log ends:\n{tail}") from None
    except BaseException:
        cluster.stop()
        raise
    return cluster
