"""A Prefect server for one command (``cxr demo``, ``cxr study``) when ``PREFECT_API_URL`` names none.

Prefect would start a temporary server of its own, in the command's process group: a Ctrl-C at the
terminal stops it together with the command, and the flow, which reports its crash to that server, then
waits on a dead API for minutes. This one runs in a process group of its own (SIGINT from the terminal
does not reach it), lives exactly as long as the command, and is stopped after the flow has recorded how
it ended. Its database is ``<home>/prefect/prefect.db``: ``PREFECT_HOME=<home>/prefect prefect server
start`` shows the command's flow runs afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxr.services.stack import STARTUP_TIMEOUT_S, PrefectServer, StackPaths


@contextmanager
def flow_server(home: Path) -> Iterator[tuple[str, Path] | None]:
    """Within the block, a Prefect API: ``PREFECT_API_URL`` when it is set (yields None), else a server of
    the command's own, started in ``home`` (yields its API URL and its PREFECT_HOME)."""
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    paths = StackPaths(home.resolve())
    server = PrefectServer(paths).launch()
    try:
        server.wait_ready(STARTUP_TIMEOUT_S["prefect"])
        yield server.url, paths.prefect_home
    finally:
        server.stop()
