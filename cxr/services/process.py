"""Starting, health-checking and stopping the server processes cxr runs for tests and ``cxr stack``.

Each server runs in its own process group (``start_new_session``), so stopping it stops whatever it
started; its output goes to a log file whose path every error message names.

A process is known by its id *and* its start time (:class:`ProcessId`): a process id recorded in a file
can belong to an unrelated process by the time the file is read again (ids are reused), and such a
process must never be signalled.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cxr.local_writes import pid_alive

LOOPBACK = "127.0.0.1"  # services bind here unless told otherwise
STOP_TIMEOUT_S = 20.0  # SIGTERM, then SIGKILL after this long


class ServiceStartError(RuntimeError):
    """A server exited or did not answer while starting; the message names its log."""


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


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks since boot) from ``/proc/<pid>/stat``; None if no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name (field 2) may hold spaces and parentheses
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def start_time(pid: int) -> str | None:
    """When process ``pid`` started, as a token that differs for any later process given the same id;
    None when there is no such process. Linux: ``/proc/<pid>/stat`` (exact clock ticks); elsewhere psutil."""
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        return None if stat is None else f"ticks:{stat[1]}"
    import psutil  # a dependency of distributed; only needed where there is no /proc

    try:
        return f"epoch:{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return None


def started_before(pid: int, epoch: float) -> bool:
    """Whether process ``pid`` exists and started before ``epoch`` (seconds since 1970)."""
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        if stat is None:
            return False
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + int(stat[1]) / os.sysconf("SC_CLK_TCK") < epoch
    import psutil

    try:
        return psutil.Process(pid).create_time() < epoch
    except psutil.NoSuchProcess:
        return False


@dataclass(frozen=True)
class ProcessId:
    """A process as recorded in a state file: its id and its start time (None: not known)."""

    pid: int
    started: str | None

    @classmethod
    def of(cls, pid: int) -> ProcessId:
        return cls(pid, start_time(pid))

    def is_running(self) -> bool:
        """Whether this very process (same id, same start time) is alive and not a zombie."""
        if self.started is None or start_time(self.pid) != self.started:
            return False
        stat = _proc_stat(self.pid) if Path("/proc/self/stat").exists() else None
        return stat is None or stat[0] != "Z"


def spawn(
    args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``args`` in its own process group, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own handle
        return subprocess.Popen(
            list(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env else None,
            cwd=cwd,
            start_new_session=True,
        )


def wait_until_ready(
    name: str, process: subprocess.Popen, log_path: Path, ready: Callable[[], bool], timeout_s: float
) -> subprocess.Popen:
    """Poll ``ready()`` until it holds; raise :class:`ServiceStartError` with the log's path if the process
    exits first or time runs out (then its process group is stopped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceStartError(f"{name} exited with {process.returncode}; see {log_path}")
        if ready():
            return process
        time.sleep(0.25)
    stop_group(process.pid)
    raise ServiceStartError(f"{name} did not answer within {timeout_s} s; see {log_path}")


class ServerProcess:
    """What a server object shares: ``launch`` (spawn, do not wait), ``wait_ready``, ``start`` (both), and a
    ``stop`` that ends its whole process group. Subclasses define the attributes below, ``launch`` and ``ready``."""

    name: str
    process: subprocess.Popen | None
    log_path: Path | None
    port: int  # where clients reach it, and
    url: str
    health_url: str  # what answers once it is ready

    def launch(self) -> Self:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout_s: float) -> Self:
        if self.process is None or self.log_path is None:
            raise ServiceStartError(f"{self.name} was not launched")
        wait_until_ready(self.name, self.process, self.log_path, self.ready, timeout_s)
        return self

    def process_id(self) -> ProcessId:
        if self.process is None:
            raise ServiceStartError(f"{self.name} was not launched")
        return ProcessId.of(self.process.pid)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the server's process group, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        stop_group(self.process.pid, timeout_s)
        self.process.wait()


def _group_exists(pgid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap our own child, if it is one
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if anything is left after ``timeout_s``.
    Only for a process this program started and still holds (see :func:`stop_recorded` otherwise)."""
    _stop_groups([pid], timeout_s)


def _stop_groups(pgids: Sequence[int], timeout_s: float) -> None:
    """SIGTERM every group at once, wait for all of them, SIGKILL what is left at the deadline."""
    signalled = []
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
            signalled.append(pgid)
    deadline = time.monotonic() + timeout_s
    while signalled and time.monotonic() < deadline:
        signalled = [pgid for pgid in signalled if _group_exists(pgid)]
        if signalled:
            time.sleep(0.1)
    for pgid in signalled:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


class Stopped(enum.Enum):
    STOPPED = "stopped"
    GONE = "already gone"
    NOT_OURS = "not signalled"  # its id now names another process, or its start time was never recorded


def stop_recorded(processes: Sequence[ProcessId], timeout_s: float = STOP_TIMEOUT_S) -> list[Stopped]:
    """Stop the process groups of recorded processes, all at once; what happened to each, in order.

    A group is signalled only when its leader is the recorded process (same id and start time), or when
    the leader is gone but members of its group are left: the kernel gives out no id that still names a
    process group, so such a group is the recorded one's.
    """
    outcomes: list[Stopped] = []
    for process in processes:
        now = start_time(process.pid)
        if now is not None and (process.started is None or now != process.started):
            outcomes.append(Stopped.NOT_OURS)
        elif _group_exists(process.pid):
            outcomes.append(Stopped.STOPPED)
        else:
            outcomes.append(Stopped.GONE)
    _stop_groups([p.pid for p, o in zip(processes, outcomes, strict=True) if o is Stopped.STOPPED], timeout_s)
    return outcomes


alive = pid_alive  # whether a process with this id exists (one home: cxr.storage)
