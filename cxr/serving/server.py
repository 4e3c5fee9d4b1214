"""``cxr serve`` as a process: the model loaded, then the port bound, then uvicorn serving until a signal.

The order is the contract: the model is loaded (seconds) before anything binds, so a bad ``--model``
fails with nothing bound and a server that answers ``GET /health`` is ready. The socket is bound here
rather than by uvicorn so that a port in use is one clear error line (uvicorn would log and exit 1).
One line on stderr says when it serves.

Signals: the ``cxr`` entry point's rule (:mod:`cxr.signals`). While uvicorn serves, its own handlers
take SIGINT and SIGTERM: it stops taking connections, gives requests in flight up to
:data:`GRACE_S` seconds, then gives the signal back to the entry point's handler, which ends the command
with one line and exit code 128 + the signal's number, as every ``cxr`` command does.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn
import uvicorn.config
import uvicorn.server

from cxr import signals
from cxr.redact import redact
from cxr.serving.app import build_app
from cxr.serving.errors import ENDPOINTS
from cxr.serving.limits import ServeLimits
from cxr.serving.scoring import Scorer

GRACE_S = 5  # a request being scored when a signal arrives has this long to finish; then its connection is closed


def open_scorer(model_uri: str, device: str) -> Scorer:
    """The model loaded (in the scoring thread, :class:`Scorer`), ready to serve; ValueError naming a file that
    is no model bundle."""
    from cxr.learn.predict import open_predictor

    return Scorer(lambda: open_predictor(model_uri, None, device))


def address(host: str, port: int) -> tuple[socket.AddressFamily, tuple]:
    """The socket family and address ``--host`` and ``--port`` name; ValueError for a host that resolves to none."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
    except socket.gaierror as err:
        raise ValueError(f"--host {host}: not an address, nor a name this machine resolves ({err.strerror})") from None
    return family, sockaddr


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening); ValueError saying why it cannot be."""
    family, sockaddr = address(host, port)
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on connections of such a socket, and without it
    # a response's headers and body, written apart, waited 40 ms for the client's delayed ACK on a kept-alive one
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind(sockaddr)
    except OSError as err:
        sock.close()
        why = {
            errno.EADDRINUSE: f"port {port} on {host} is in use (another server?): stop it or give --port another",
            errno.EACCES: f"port {port} on {host}: binding it needs privileges here; give --port above 1023",
            errno.EADDRNOTAVAIL: f"--host {host}: not an address of this machine",
        }.get(err.errno, f"cannot listen on {host}:{port}: {err.strerror or err}")
        raise ValueError(why) from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def log_config() -> dict:
    """uvicorn's logging, its access lines (``--access-log``) on stderr beside the rest (stdout is for
    results in every ``cxr`` command), and this package's logger (a request that failed) with them."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config["loggers"]["cxr.serving"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


class _Server(uvicorn.Server):
    """uvicorn's server, saying so once it listens, and leaving a signal ignored at start ignored."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_ready()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn takes SIGINT and SIGTERM even where they were ignored (a shell's background job ignores
        SIGINT): those stay ignored, as :mod:`cxr.signals` leaves them, and a Ctrl-C meant for the shell's
        foreground job does not stop the server."""
        ignored = [s for s in uvicorn.server.HANDLED_SIGNALS if signal.getsignal(s) is signal.SIG_IGN]
        with super().capture_signals():
            for s in ignored:
                signal.signal(s, signal.SIG_IGN)
            yield


def serve(
    scorer: Scorer,
    model_uri: str,
    sock: socket.socket,
    limits: ServeLimits,
    access_log: bool = False,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve ``scorer``'s model on ``sock`` until SIGINT or SIGTERM (then :class:`cxr.signals.Interrupted`)."""
    app = build_app(scorer, model_uri, limits)
    config = uvicorn.Config(
        app,
        log_config=log_config(),
        log_level="warning",
        access_log=access_log,
        lifespan="off",
        timeout_graceful_shutdown=GRACE_S,
        server_header=False,
    )
    url = url_of(sock)
    server = _Server(config, lambda: announce(f"serving {redact(model_uri)} on {url} ({ENDPOINTS})"))
    try:
        server.run(sockets=[sock])
    finally:
        answered = server.server_state.total_requests
        signals.note(f"the server on {url} stopped after {answered} request{'s' if answered != 1 else ''}")
        sock.close()
        scorer.close()
