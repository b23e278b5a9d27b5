"""A real Ray head for the cluster tests: its own CPUs, bound to 127.0.0.1, token authentication on.

``ray start --head --block`` runs in its own process group with a fresh random token (in the
environment, never in ~/.ray), every port chosen free, and its files under a short temporary
folder; stopping it ends the whole group. Ray reads two settings when it is imported, so
:func:`client_environment` must be applied before the test process first imports ray.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

RAY = Path(sys.executable).with_name("ray")
# Ray replaces 127.0.0.1 by the machine's network address (and listens there) unless told not to.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
START_TIMEOUT_S = 120


@dataclass
class RayHead:
    """A running head: its address, its token, the ``ray start`` process and where its logs are."""

    address: str
    token: str
    process: subprocess.Popen
    temp_dir: Path

    def environment(self) -> dict[str, str]:
        """What a client process needs to reach this head (on top of os.environ)."""
        return {**LOOPBACK_ONLY, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def worker_processes(self) -> dict[int, str]:
        """This head's Ray processes by pid and title (``ray::IDLE``, ``ray::_run_point``, …)."""
        return {pid: title for pid, title in _session_processes(self.process.pid).items() if title.startswith("ray::")}

    def running(self, task: str = "_run_point") -> list[int]:
        """Pids of this head's workers executing ``task`` right now."""
        return [pid for pid, title in self.worker_processes().items() if title.split()[0] == f"ray::{task}"]


def _session_processes(leader: int) -> dict[int, str]:
    """Processes of ``leader``'s session (workers get process groups of their own, not sessions)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Zombies (exited, not yet reaped) are not running: "pid (name) Z …".
            if os.getsid(int(entry.name)) == leader and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, ProcessLookupError, IndexError):
            continue
    return found


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def running_ray_head(cpus: int = 2) -> Iterator[RayHead]:
    """Start a head with ``cpus`` CPUs; stop its whole process group afterwards."""
    token = secrets.token_hex(32)
    # Unix socket paths are limited to ~107 bytes: keep the folder short.
    temp_dir = Path(tempfile.mkdtemp(prefix="fray-", dir="/tmp"))
    gcs, agent, agent_grpc, metrics, runtime_env, node_manager, object_manager = _free_ports(7)
    env = {**os.environ, **LOOPBACK_ONLY, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    command = [
        str(RAY), "start", "--head", "--block", "--disable-usage-stats", "--include-dashboard=false",
        "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--num-cpus={cpus}", "--num-gpus=0",
        f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
        f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
        # Random worker ports rather than Ray's fixed 10002–19999 range, which another Ray may hold.
        "--min-worker-port=0", "--max-worker-port=0",
    ]
    log = open(temp_dir / "ray-start.log", "wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(f"127.0.0.1:{gcs}", token, process, temp_dir)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"Ray runtime started" not in (temp_dir / "ray-start.log").read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{(temp_dir / 'ray-start.log').read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield head
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to every process of the head's session at once, SIGKILL to any left after 3 s (the
    gcs_server and `ray start` itself take ~20 s to stop gracefully; a test head keeps nothing)."""
    def signal_all(sig: int) -> bool:
        pids = _session_processes(process.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return bool(pids)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + 3
    while _session_processes(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_all(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
