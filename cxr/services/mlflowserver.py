"""A real MLflow tracking server on 127.0.0.1 (SQLite backend, artifacts proxied to a folder or S3).

Used by the tests and the local stack. Artifacts on S3 take their credentials and endpoint from the
AWS environment variables of the process that starts the server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cxr.processes import stop_group


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class MlflowServer:
    """``mlflow server`` with one worker; ``artifacts`` is a folder or an ``s3://`` URL."""

    data_dir: Path
    artifacts: str
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 90.0) -> MlflowServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        if os.environ.get("AWS_ENDPOINT_URL"):
            env.setdefault("MLFLOW_S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
        args = [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.data_dir / 'mlflow.db'}",
            "--artifacts-destination", self.artifacts,
            "--host", self.host, "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        self.log_path = self.log_path or self.data_dir / "mlflow-server.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as answer:  # noqa: S310 - loopback
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"mlflow server did not answer within {timeout_s} s")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the server's process group, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        stop_group(self.process.pid, timeout_s)
        self.process.wait()
