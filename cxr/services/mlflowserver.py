"""A real MLflow tracking server on 127.0.0.1 (SQLite backend, artifacts proxied to a folder or S3).

Used by the tests and the local stack. Artifacts on S3 take their credentials and endpoint from the
AWS environment variables of the process that starts the server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cxr.offline import set_offline_defaults
from cxr.services.process import LOOPBACK, ServerProcess, answers, free_port, spawn


@dataclass
class MlflowServer(ServerProcess):
    """``mlflow server`` with one worker; ``artifacts`` is a folder or an ``s3://`` URL."""

    name: ClassVar[str] = "mlflow server"
    data_dir: Path
    artifacts: str
    host: str = LOOPBACK
    port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def launch(self) -> MlflowServer:
        """Spawn the server without waiting for it (:meth:`wait_ready` waits, :meth:`start` does both)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        env = set_offline_defaults(dict(os.environ))
        if os.environ.get("AWS_ENDPOINT_URL"):
            env.setdefault("MLFLOW_S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
        args = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.data_dir / 'mlflow.db'}",
            "--artifacts-destination",
            self.artifacts,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.log_path = self.log_path or self.data_dir / "mlflow-server.log"
        self.process = spawn(args, self.log_path, env)
        return self

    @property
    def health_url(self) -> str:
        return self.url + "/health"

    def ready(self) -> bool:
        return answers(self.health_url, healthy_status=200)

    def start(self, timeout_s: float = 90.0) -> MlflowServer:
        return self.launch().wait_ready(timeout_s)
