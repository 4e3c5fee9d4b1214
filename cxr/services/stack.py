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
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.mlflowserver import MlflowServer, free_port
from cxr.processes import stop_group
from cxr.s3server import S3Server

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
        text = f"export AWS_ACCESS_KEY_ID=cxr-{secrets.token_hex(6)}\nexport AWS_SECRET_ACCESS_KEY={secrets.token_urlsafe(24)}\n"
        fd = os.open(paths.credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    for line in paths.credentials.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        os.environ[key] = value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False


def _start_prefect(paths: StackPaths, timeout_s: float = 90.0) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(paths.root / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = open(paths.logs / "prefect-server.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}; see {paths.logs / 'prefect-server.log'}")
        if _answers(url + "/health"):
            return {"pid": proc.pid, "port": port, "url": url, "health": url + "/health"}
        time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError(f"prefect server did not answer within {timeout_s} s")


def up(root: str | Path = ".cxr/stack") -> dict[str, Any]:
    """Start the three services (or report the running ones); returns the stack's state."""
    paths = StackPaths(Path(root).resolve())
    if paths.state.exists():
        state = json.loads(paths.state.read_text())
        if all(_alive(s["pid"]) for s in state["services"].values()):
            return state
        down(root)
    paths.logs.mkdir(parents=True, exist_ok=True)
    _load_credentials(paths)
    services: dict[str, Any] = {}
    try:
        s3 = S3Server(paths.root / "s3", log_path=paths.logs / "s3-server.log").start()
        services["s3"] = {"pid": s3.process.pid, "port": s3.ports["s3"], "url": s3.endpoint, "health": s3.endpoint + "/"}
        os.environ["AWS_ENDPOINT_URL"] = s3.endpoint
        from cxr import storage

        fs, _ = storage.filesystem(f"s3://{BUCKET}")
        if not fs.exists(BUCKET):
            fs.mkdir(BUCKET)
        mlflow = MlflowServer(paths.root / "mlflow", f"s3://{BUCKET}/mlflow", log_path=paths.logs / "mlflow-server.log").start()
        services["mlflow"] = {"pid": mlflow.process.pid, "port": mlflow.port, "url": mlflow.url, "health": mlflow.url + "/health"}
        services["prefect"] = _start_prefect(paths)
    except Exception:
        for service in services.values():
            stop_group(service["pid"])
        raise
    state = {"root": str(paths.root), "services": services, "bucket": f"s3://{BUCKET}",
             "credentials_file": str(paths.credentials) if paths.credentials.exists() else None}  # fmt: skip
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
        report[name] = {"url": service["url"], "pid": service["pid"], "alive": _alive(service["pid"]),
                        "healthy": _answers(service["health"])}  # fmt: skip
    return {"running": all(r["alive"] and r["healthy"] for r in report.values()), "services": report,
            "credentials_file": state.get("credentials_file"), "logs": str(paths.logs)}  # fmt: skip


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
