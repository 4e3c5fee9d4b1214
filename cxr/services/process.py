"""Starting, health-checking and stopping the server processes cxr runs for tests and ``cxr stack``.

Each server runs in its own process group (``start_new_session``), so stopping it stops whatever it
started; its output goes to a log file whose path every error message names.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"  # services bind here unless told otherwise


def free_port(host: str = LOOPBACK) -> int:
    """A port the kernel says is free now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def answers(url: str, healthy_status: int | None = None) -> bool:
    """Whether ``url`` answers HTTP at all (any status), or with ``healthy_status`` when given."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return healthy_status is None or response.status == healthy_status
    except urllib.error.HTTPError as err:
        return healthy_status is None or err.code == healthy_status
    except OSError:
        return False


def spawn(args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``args`` in its own process group, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own handle
        return subprocess.Popen(
            list(args), stdout=log, stderr=subprocess.STDOUT, env=dict(env) if env else None, start_new_session=True
        )


def wait_until_ready(
    name: str, process: subprocess.Popen, log_path: Path, ready: Callable[[], bool], timeout_s: float
) -> subprocess.Popen:
    """Poll ``ready()`` until it holds; raise with the log's path if the process exits first or time runs out
    (then its process group is stopped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see {log_path}")
        if ready():
            return process
        time.sleep(0.25)
    stop_group(process.pid)
    raise TimeoutError(f"{name} did not answer within {timeout_s} s; see {log_path}")


def start_server(
    name: str,
    args: Sequence[str],
    log_path: Path,
    ready: Callable[[], bool],
    timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """:func:`spawn`, then :func:`wait_until_ready`."""
    return wait_until_ready(name, spawn(args, log_path, env), log_path, ready, timeout_s)


class ServerProcess:
    """What a server object shares: a ``process`` and a ``stop`` that ends its whole process group."""

    process: subprocess.Popen | None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the server's process group, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        stop_group(self.process.pid, timeout_s)
        self.process.wait()


def stop_group(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if anything is left after ``timeout_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap our own child, if it is one
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
