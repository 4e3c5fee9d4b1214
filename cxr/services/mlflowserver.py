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

from cxr.offline import set_offline_defaults
from cxr.services.process import LOOPBACK, ServerProcess, answers, free_port, start_server


@dataclass
class MlflowServer(ServerProcess):
    """``mlflow server`` with one worker; ``artifacts`` is a folder or an ``s3://`` URL."""

    data_dir: Path
    artifacts: str
    host: str = LOOPBACK
    port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 90.0) -> MlflowServer:
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

        def ready() -> bool:
            return answers(self.url + "/health", healthy_status=200)

        self.process = start_server("mlflow server", args, self.log_path, ready, timeout_s, env)
        return self
