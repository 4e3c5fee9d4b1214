"""``cxr stack up|down|status|env``: the local stack on 127.0.0.1 for the embedded-default laptop setup at
team scale: an S3 server (SeaweedFS), an MLflow tracking server (SQLite, artifacts on that S3), and a
Prefect server. Logs go to ``<dir>/logs``; ports and process ids to ``<dir>/stack.json``.

Credentials: the S3 server accepts the AWS keys of the environment. When none are set, ``up`` makes a
random pair and writes it to ``<dir>/credentials.env`` (mode 600); no key is ever printed or logged.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr import storage
from cxr.offline import set_offline_defaults
from cxr.services.mlflowserver import MlflowServer
from cxr.services.process import LOOPBACK, ServerProcess, alive, answers, free_port, spawn, stop_group, wait_until_ready
from cxr.services.s3server import S3Server

BUCKET = "cxr"


@dataclass
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


def _load_credentials(paths: StackPaths) -> None:
    """AWS keys from the environment, else from the stack's credentials file, else new random ones."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return
    if not paths.credentials.exists():
        paths.root.mkdir(parents=True, exist_ok=True)
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

    def __init__(self, paths: StackPaths) -> None:
        self.paths = paths
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}/api"
        self.log_path = paths.logs / "prefect-server.log"
        self.process: subprocess.Popen | None = None

    def spawn(self) -> PrefectServer:
        """Start it without waiting: it is the slowest of the three to answer, the others start meanwhile."""
        env = set_offline_defaults({**os.environ, "PREFECT_HOME": str(self.paths.root / "prefect")})
        prefect = str(Path(sys.executable).parent / "prefect")
        self.process = spawn(
            [prefect, "server", "start", "--host", LOOPBACK, "--port", str(self.port)], self.log_path, env
        )
        return self

    def wait(self, timeout_s: float = 90.0) -> dict[str, Any]:
        """Wait until it answers; its entry in ``stack.json``."""
        if self.process is None:
            raise RuntimeError("the Prefect server was not started")
        health = self.url + "/health"
        wait_until_ready("prefect server", self.process, self.log_path, lambda: answers(health), timeout_s)
        return _entry(self.process.pid, self.port, self.url, health)


def _entry(pid: int, port: int, url: str, health: str) -> dict[str, Any]:
    return {"pid": pid, "port": port, "url": url, "health": health}


def up(root: str | Path = ".cxr/stack") -> dict[str, Any]:
    """Start the three services (or report the running ones); returns the stack's state."""
    paths = StackPaths(Path(root).resolve())
    if paths.state.exists():
        state = json.loads(paths.state.read_text())
        if all(alive(s["pid"]) for s in state["services"].values()):
            return state
        down(root)
    paths.logs.mkdir(parents=True, exist_ok=True)
    _load_credentials(paths)
    services: dict[str, Any] = {}
    prefect = PrefectServer(paths).spawn()
    try:
        s3 = S3Server(paths.root / "s3", log_path=paths.logs / "s3-server.log").start()
        services["s3"] = _entry(s3.process.pid, s3.ports["s3"], s3.endpoint, s3.endpoint + "/")
        os.environ["AWS_ENDPOINT_URL"] = s3.endpoint
        fs, _ = storage.filesystem(f"s3://{BUCKET}")
        if not fs.exists(BUCKET):
            fs.mkdir(BUCKET)
        mlflow = MlflowServer(paths.root / "mlflow", f"s3://{BUCKET}/mlflow", log_path=paths.logs / "mlflow-server.log")
        mlflow.start()
        services["mlflow"] = _entry(mlflow.process.pid, mlflow.port, mlflow.url, mlflow.url + "/health")
        services["prefect"] = prefect.wait()
    except Exception:
        prefect.stop()
        for service in services.values():
            stop_group(service["pid"])
        raise
    state = {
        "root": str(paths.root),
        "services": services,
        "bucket": f"s3://{BUCKET}",
        "credentials_file": str(paths.credentials) if paths.credentials.exists() else None,
    }
    paths.state.write_text(json.dumps(state, indent=2) + "\n")
    return state


def down(root: str | Path = ".cxr/stack") -> list[str]:
    """Stop every service of the stack (SIGTERM to each process group, SIGKILL after 20 s)."""
    paths = StackPaths(Path(root).resolve())
    if not paths.state.exists():
        return []
    state = json.loads(paths.state.read_text())
    stopped = []
    for name in ("prefect", "mlflow", "s3"):  # clients before the storage they write to
        service = state["services"].get(name)
        if service:
            stop_group(service["pid"])
            stopped.append(name)
    paths.state.unlink()
    return stopped


def status(root: str | Path = ".cxr/stack") -> dict[str, Any]:
    """Each service: its URL, whether its process lives and whether it answers its health check."""
    paths = StackPaths(Path(root).resolve())
    if not paths.state.exists():
        return {"running": False, "services": {}}
    state = json.loads(paths.state.read_text())
    report = {}
    for name, service in state["services"].items():
        report[name] = {
            "url": service["url"],
            "pid": service["pid"],
            "alive": alive(service["pid"]),
            "healthy": answers(service["health"]),
        }
    return {
        "running": all(r["alive"] and r["healthy"] for r in report.values()),
        "services": report,
        "credentials_file": state.get("credentials_file"),
        "logs": str(paths.logs),
    }


def env_lines(root: str | Path = ".cxr/stack") -> list[str]:
    """Shell lines that point cxr, MLflow, Prefect and S3 clients at the stack (no secrets printed)."""
    paths = StackPaths(Path(root).resolve())
    state = json.loads(paths.state.read_text())
    s = state["services"]
    lines = [
        f"export AWS_ENDPOINT_URL={s['s3']['url']}",
        f"export MLFLOW_TRACKING_URI={s['mlflow']['url']}",
        f"export PREFECT_API_URL={s['prefect']['url']}",
    ]
    if state.get("credentials_file"):
        lines.insert(0, f". {state['credentials_file']}")
    return lines
