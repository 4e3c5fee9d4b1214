"""``cxr stack up|down|status|env``: the local stack on 127.0.0.1 for the embedded-default laptop setup at
team scale: an S3 server (SeaweedFS), an MLflow tracking server (SQLite, artifacts on that S3), and a
Prefect server. Logs go to ``<dir>/logs``; processes, ports and URLs to ``<dir>/stack.json``
(:mod:`cxr.services.stackstate`), written at every step.

Credentials: the S3 server accepts the AWS keys of the environment. When none are set, ``up`` makes a
random pair and writes it to ``<dir>/credentials.env`` (mode 600); no key is ever printed or logged.

Signals: SIGINT, SIGTERM or SIGHUP while ``up`` starts the servers stops every one it started and removes
``stack.json``, then raises :class:`~cxr.signals.Interrupted`. A ``stack up`` killed outright
leaves ``stack.json`` in phase ``starting``, naming what it had started: ``down`` (or the next ``up``)
stops those.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from cxr import storage
from cxr.offline import set_offline_defaults
from cxr.services.mlflowserver import MlflowServer
from cxr.services.process import LOOPBACK, ProcessId, ServerProcess, Stopped, answers, free_port, spawn, stop_recorded
from cxr.services.s3server import S3Server
from cxr.services.stackstate import STARTING, UP, ServiceRecord, StackState, read_state, remove_state, write_state
from cxr.signals import Interrupted, held_back, raised_as_interrupted

BUCKET = "cxr"
SERVICES = ("s3", "mlflow", "prefect")  # the order they start in; they stop in reverse
NEEDS = {"mlflow": ("s3",)}  # MLflow keeps its artifacts on the stack's S3
STARTUP_TIMEOUT_S = {"s3": 60.0, "mlflow": 90.0, "prefect": 90.0}


class StackBusyError(RuntimeError):
    """Another ``cxr stack up`` is starting the stack in the same folder."""


@dataclass(frozen=True)
class StackPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "stack.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.env"

    @property
    def prefect_home(self) -> Path:
        """The Prefect server's PREFECT_HOME (its database, prefect.db)."""
        return self.root / "prefect"


def _paths(root: str | Path) -> StackPaths:
    return StackPaths(Path(root).resolve())


def _load_credentials(paths: StackPaths) -> None:
    """AWS keys from the environment, else from the stack's credentials file, else new random ones."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return
    if not paths.credentials.exists():
        key_id, secret = f"cxr-{secrets.token_hex(6)}", secrets.token_urlsafe(24)
        text = f"export AWS_ACCESS_KEY_ID={key_id}\nexport AWS_SECRET_ACCESS_KEY={secret}\n"
        fd = os.open(paths.credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    for line in paths.credentials.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        os.environ[key] = value


class PrefectServer(ServerProcess):
    """``prefect server`` on a free loopback port, its state in ``<root>/prefect``."""

    name: ClassVar[str] = "prefect server"

    def __init__(self, paths: StackPaths) -> None:
        self.paths = paths
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}/api"
        self.log_path = paths.logs / "prefect-server.log"
        self.process: subprocess.Popen | None = None

    def launch(self) -> PrefectServer:
        # `--port` alone leaves the UI's settings (`/ui-settings`) naming the API at the default port 4200, or
        # at the environment's PREFECT_API_URL: a browser would look for the API there, not on this server.
        own = {
            "PREFECT_HOME": str(self.paths.prefect_home),
            "PREFECT_API_URL": self.url,
            "PREFECT_SERVER_UI_API_URL": self.url,
        }
        env = set_offline_defaults({**os.environ, **own})
        prefect = str(Path(sys.executable).parent / "prefect")
        self.process = spawn(
            [prefect, "server", "start", "--host", LOOPBACK, "--port", str(self.port)], self.log_path, env
        )
        return self

    @property
    def health_url(self) -> str:
        return self.url + "/health"

    def ready(self) -> bool:
        return answers(self.health_url)


def requested(services: Sequence[str]) -> tuple[str, ...]:
    """The services to start for a request, with what they need, in starting order."""
    unknown = sorted(set(services) - set(SERVICES))
    if unknown:
        raise ValueError(f"unknown service {', '.join(unknown)}: choose from {', '.join(SERVICES)}")
    wanted = set(services) | {need for s in services for need in NEEDS.get(s, ())}
    return tuple(s for s in SERVICES if s in wanted)


class _Launch:
    """The servers one ``up`` has spawned so far, mirrored into ``stack.json`` as each one is spawned."""

    def __init__(self, paths: StackPaths) -> None:
        self.paths = paths
        credentials = str(paths.credentials) if paths.credentials.exists() else None
        self.state = StackState(str(paths.root), STARTING, ProcessId.of(os.getpid()), credentials_file=credentials)

    def begin(self) -> None:
        write_state(self.paths.state, self.state)

    def spawn(self, name: str, server: ServerProcess) -> None:
        """Launch ``server`` and record it; a signal meanwhile waits until it is recorded."""
        with held_back():
            server.launch()
            record = ServiceRecord(name, server.process_id(), server.port, server.url, server.health_url)
            self.state = self.state.adding(record)
            write_state(self.paths.state, self.state)

    def finish(self) -> StackState:
        bucket = f"s3://{BUCKET}" if self.state.service("s3") else None
        self.state = replace(self.state, phase=UP, bucket=bucket, services=tuple(_in_order(self.state.services)))
        write_state(self.paths.state, self.state)
        return self.state

    def undo(self) -> tuple[str, ...]:
        """Stop every server spawned so far and remove ``stack.json``; the names of those stopped."""
        stopped = _stop(self.state)
        remove_state(self.paths.state)
        return tuple(record.name for record, outcome in stopped if outcome is Stopped.STOPPED)


def up(root: str | Path = ".cxr/stack", services: Sequence[str] = SERVICES) -> StackState:
    """Start the services (or report the running ones) and wait until each answers; the stack's state.

    SIGINT, SIGTERM or SIGHUP meanwhile: every server started is stopped, ``stack.json`` removed, and
    :class:`Interrupted` raised naming what was stopped.
    """
    wanted = requested(services)
    paths = _paths(root)
    state = read_state(paths.state)
    if state is not None:
        if state.phase == STARTING and state.starter.is_running():
            raise StackBusyError(f"another `cxr stack up` (pid {state.starter.pid}) is starting the stack in {root}")
        if state.phase == UP and all(s.process.is_running() for s in state.services):
            if set(wanted) <= set(state.names()):
                return state
            raise ValueError(
                f"the stack in {root} runs {', '.join(state.names())}; "
                f"to start {', '.join(wanted)}, stop it first with `cxr stack down`"
            )
        down(root)  # what is left of a stack that died, or of an up that was killed
    paths.root.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.root, 0o700)  # data, logs and keys of the stack are its user's alone
    paths.logs.mkdir(exist_ok=True)
    _load_credentials(paths)
    with raised_as_interrupted():
        launch = _Launch(paths)
        try:
            launch.begin()
            _start(launch, wanted)
            return launch.finish()
        except Interrupted as err:
            with held_back(raise_after=False):  # a second Ctrl-C must not cut the clean-up short
                stopped = launch.undo()
            raise Interrupted(err.signum, stopped) from None
        except BaseException:
            with held_back(raise_after=False):
                launch.undo()
            raise


def _start(launch: _Launch, wanted: tuple[str, ...]) -> None:
    paths = launch.paths
    prefect = PrefectServer(paths) if "prefect" in wanted else None
    if prefect is not None:  # the slowest to answer: the others start meanwhile
        launch.spawn("prefect", prefect)
    if "s3" in wanted:
        s3 = S3Server(paths.root / "s3", log_path=paths.logs / "s3-server.log")
        launch.spawn("s3", s3)
        s3.wait_ready(STARTUP_TIMEOUT_S["s3"])
        os.environ["AWS_ENDPOINT_URL"] = s3.url
        fs, _ = storage.filesystem(f"s3://{BUCKET}")
        if not fs.exists(BUCKET):
            fs.mkdir(BUCKET)
    if "mlflow" in wanted:
        mlflow = MlflowServer(paths.root / "mlflow", f"s3://{BUCKET}/mlflow", log_path=paths.logs / "mlflow-server.log")
        launch.spawn("mlflow", mlflow)
        mlflow.wait_ready(STARTUP_TIMEOUT_S["mlflow"])
    if prefect is not None:
        prefect.wait_ready(STARTUP_TIMEOUT_S["prefect"])


def _stop(state: StackState) -> list[tuple[ServiceRecord, Stopped]]:
    """Stop the recorded servers, clients before the storage they write to; each with what happened to it."""
    order = _in_order(state.services, reverse=True)
    clients, storage_servers = [s for s in order if s.name != "s3"], [s for s in order if s.name == "s3"]
    outcomes: list[tuple[ServiceRecord, Stopped]] = []
    for group in (clients, storage_servers):
        outcomes += zip(group, stop_recorded([s.process for s in group]), strict=True)
    return outcomes


def _in_order(records: Sequence[ServiceRecord], reverse: bool = False) -> list[ServiceRecord]:
    names = list(reversed(SERVICES)) if reverse else list(SERVICES)
    return sorted(records, key=lambda r: names.index(r.name))


@dataclass(frozen=True)
class StopReport:
    """What ``down`` did to each recorded server: stopped, already gone, or not signalled (its process id
    now names another process, or the record has no start time to tell)."""

    outcomes: tuple[tuple[ServiceRecord, Stopped], ...] = ()

    def names(self, outcome: Stopped) -> list[str]:
        return [record.name for record, o in self.outcomes if o is outcome]


def down(root: str | Path = ".cxr/stack") -> StopReport:
    """Stop every recorded server of the stack whose process is still the recorded one (SIGTERM to each
    process group, SIGKILL after 20 s), then remove ``stack.json``."""
    paths = _paths(root)
    state = read_state(paths.state)
    if state is None:
        return StopReport()
    outcomes = _stop(state)
    remove_state(paths.state)
    return StopReport(tuple(outcomes))


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    pid: int
    alive: bool  # the recorded process (id and start time) is running
    healthy: bool  # it answers its health check


@dataclass(frozen=True)
class StackStatus:
    phase: str | None  # None: no stack.json
    services: tuple[ServiceStatus, ...]
    credentials_file: str | None
    logs: str
    starter: ProcessId | None = None  # the `stack up` at work, while the phase is STARTING
    starter_running: bool = False

    @property
    def running(self) -> bool:
        return self.phase == UP and bool(self.services) and all(s.alive and s.healthy for s in self.services)

    def to_json(self) -> dict[str, object]:
        return {
            "running": self.running,
            "phase": self.phase,
            "services": {
                s.name: {"url": s.url, "pid": s.pid, "alive": s.alive, "healthy": s.healthy} for s in self.services
            },
            "credentials_file": self.credentials_file,
            "logs": self.logs,
        }


def status(root: str | Path = ".cxr/stack") -> StackStatus:
    """Each recorded service: its URL, whether its process lives and whether it answers its health check."""
    paths = _paths(root)
    state = read_state(paths.state)
    if state is None:
        return StackStatus(None, (), None, str(paths.logs))
    services = tuple(
        ServiceStatus(s.name, s.url, s.process.pid, alive := s.process.is_running(), alive and answers(s.health))
        for s in state.services
    )
    starter = state.starter if state.phase == STARTING else None
    running = starter is not None and starter.is_running()
    return StackStatus(state.phase, services, state.credentials_file, str(paths.logs), starter, running)


def env_lines(root: str | Path = ".cxr/stack") -> list[str]:
    """Shell lines that point cxr, MLflow, Prefect and S3 clients at the stack (no secrets printed)."""
    paths = _paths(root)
    state = read_state(paths.state)
    if state is None or state.phase != UP:
        raise FileNotFoundError(f"no stack is up in {root}; run `cxr stack up`")
    variables = {"s3": "AWS_ENDPOINT_URL", "mlflow": "MLFLOW_TRACKING_URI", "prefect": "PREFECT_API_URL"}
    lines = [f"export {variables[s.name]}={s.url}" for s in _in_order(state.services)]
    if state.credentials_file:
        lines.insert(0, f". {state.credentials_file}")
    return lines
