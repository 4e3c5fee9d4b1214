"""``<dir>/stack.json``: which processes the local stack runs, written atomically at every step of ``stack up``.

The file names every server process from the moment it is spawned, with its start time, so that a
``stack up`` killed at any point (even by SIGKILL) leaves a record ``stack down`` can act on, and a stale
record never makes anyone signal a process id that was reused since. ``phase`` is ``starting`` while
``stack up`` works (its own process is ``starter``) and ``up`` once every service answered.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cxr.local_writes import fsync_dir
from cxr.services.process import ProcessId, start_time, started_before

STARTING, UP = "starting", "up"


class StackStateError(ValueError):
    """stack.json cannot be read as a stack's state."""


@dataclass(frozen=True)
class ServiceRecord:
    """One server of the stack: its process, port, URL and health-check URL."""

    name: str
    process: ProcessId
    port: int
    url: str
    health: str


@dataclass(frozen=True)
class StackState:
    root: str
    phase: str  # STARTING or UP
    starter: ProcessId  # the `cxr stack up` that wrote it
    services: tuple[ServiceRecord, ...] = ()
    bucket: str | None = None
    credentials_file: str | None = None

    def service(self, name: str) -> ServiceRecord | None:
        return next((s for s in self.services if s.name == name), None)

    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services)

    def adding(self, record: ServiceRecord) -> StackState:
        return replace(self, services=(*self.services, record))

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "phase": self.phase,
            "starter": {"pid": self.starter.pid, "started": self.starter.started},
            "services": {
                s.name: {
                    "pid": s.process.pid,
                    "started": s.process.started,
                    "port": s.port,
                    "url": s.url,
                    "health": s.health,
                }
                for s in self.services
            },
            "bucket": self.bucket,
            "credentials_file": self.credentials_file,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], written: float) -> StackState:
        """``written``: when the file was last written (its mtime), to read files from before start times."""
        starter = data.get("starter") or {"pid": 0, "started": None}
        services = tuple(
            ServiceRecord(
                name, _recorded(int(s["pid"]), s.get("started"), written), int(s["port"]), s["url"], s["health"]
            )
            for name, s in data["services"].items()
        )
        return cls(
            root=data["root"],
            phase=data.get("phase", UP),  # files written before phases existed were written when all were up
            starter=ProcessId(int(starter["pid"]), starter.get("started")),
            services=services,
            bucket=data.get("bucket"),
            credentials_file=data.get("credentials_file"),
        )


def _recorded(pid: int, started: str | None, written: float) -> ProcessId:
    """The recorded process. A file from before start times were recorded names no start time: the process
    now holding that id is the recorded one if it started before the file was written (an id is given to
    a new process only after the old one ended, and the servers were running when the file was written)."""
    if started is None and started_before(pid, written):
        started = start_time(pid)
    return ProcessId(pid, started)


def read_state(path: Path) -> StackState | None:
    """The state in ``path``; None when there is none."""
    try:
        text, written = path.read_text(), path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        return StackState.from_json(json.loads(text), written)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise StackStateError(f"{path} is not a stack state file ({type(err).__name__}: {err})") from err


def write_state(path: Path, state: StackState) -> None:
    """Replace ``path`` atomically: a temp file in the same folder, fsynced, renamed over it, the folder fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state.to_json(), indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_state(path: Path) -> None:
    if path.exists():
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
