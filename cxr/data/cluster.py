"""Dask clients: a LocalCluster by default, any running cluster by its address.

The defaults for a LocalCluster's workers live here, once: :data:`WORKER_MEMORY_LIMIT` and
:data:`ALLOWED_FAILURES`. Dask and distributed are imported when a client is made, so that the CLI can
show these defaults in ``--help`` without loading them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed import Client

# Memory per worker process. Dask's nanny restarts a worker that goes above 95 % of it (and pauses one
# above 80 %), so one image that would take a machine's memory kills one worker, not the machine. It holds
# a worker's own ~200 MB, one part's shards (PART_BYTES, 64 MiB), one file (DecodeLimits.max_bytes, 64 MiB)
# and one image at its full decoding budget (DecodeLimits.max_image_bytes, 256 MiB), with room to spare.
WORKER_MEMORY_LIMIT = 2**30
# A task whose worker dies is tried on this many more workers before Dask reports KilledWorker; ingest then
# isolates the image that kills its worker (cxr/data/isolate.py). Dask's own default, 3, restarts 4 workers.
ALLOWED_FAILURES = 1
_LOGGERS = ("distributed", "tornado", "asyncio")


def check_workers(workers: int | None) -> None:
    """Refuse a number of LocalCluster workers below 1 (None: one per core)."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1 (or left out: one per core), got {workers}")


def _stop_resource_tracker(err: BaseException) -> None:
    """After an interrupted cluster is closed: end multiprocessing's resource tracker, which would outlive
    its workers until this process exits (it ignores SIGINT and SIGTERM)."""
    if not isinstance(err, KeyboardInterrupt):
        return
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)  # Python 3.8+: closes its pipe, waits
    if stop is not None:
        with suppress(OSError, ChildProcessError):
            stop()


@contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes started within the block (and by the threads it starts, e.g. Dask's event loop, whose nannies
    restart workers later) begin with SIGINT blocked: a Ctrl-C reaches the whole process group, and the
    workers must not die of it mid-task with a traceback; this process closes them. The blocked signal stays
    pending here and is handled when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # multiprocessing starts its resource tracker with the first worker, and unblocks SIGINT in the thread
    # that started it afterwards: started here first, it leaves the mask alone.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _silence() -> None:
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


class _QuietOnceStopping(logging.Filter):
    """Drops the records of a logger once the command is stopping on a signal. Setting levels after the
    ``KeyboardInterrupt`` comes too late for what Dask's event loop thread logs meanwhile: e.g.
    distributed 2026.8's ``sync`` schedules a ``cancel`` callback that raises NameError (logged by tornado
    with its traceback) when Ctrl-C lands before the call it waits for has begun."""

    def filter(self, record: logging.LogRecord) -> bool:
        from cxr.signals import stopping

        return not stopping()


@contextmanager
def _quiet_once_stopping() -> Iterator[None]:
    """Within the block, :class:`_QuietOnceStopping` filters the Dask, tornado and asyncio loggers and their
    handlers (a logger's filter sees only its own records; a handler's sees its children's too)."""
    quiet = _QuietOnceStopping()
    names = (*_LOGGERS, "tornado.application", "tornado.general", "distributed.client", "distributed.core")
    targets: list[logging.Filterer] = []
    for name in names:
        logger = logging.getLogger(name)
        targets += [logger, *logger.handlers]
    for target in targets:
        target.addFilter(quiet)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(quiet)


def _silence_if_interrupted(err: BaseException, client: Client | None = None) -> None:
    """Before a cluster is torn down after a signal: silence the errors and warnings Dask logs, here and in
    its workers, about tasks and comms cut short (the command ends with one line saying it was interrupted)."""
    if not isinstance(err, KeyboardInterrupt):
        return
    _silence()
    if client is not None:
        with suppress(Exception):
            client.run(_silence, wait=True)  # runs on each worker's event loop, beside its running task


def format_memory(n_bytes: int) -> str:
    """``1073741824`` -> ``1 GiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= size and n_bytes % size == 0:
            return f"{n_bytes // size} {unit}"
    return f"{n_bytes} B"


def parse_memory(text: str) -> int:
    """A memory size such as ``2GiB``, ``500MB`` or ``1073741824``, in bytes."""
    from dask.utils import parse_bytes

    try:
        n_bytes = int(parse_bytes(text))
    except (ValueError, TypeError):
        raise ValueError(f"a memory size must look like 2GiB, 500MB or a number of bytes, got {text!r}") from None
    if n_bytes < 64 * 2**20:
        raise ValueError(f"a worker needs at least 64 MiB of memory, got {text!r}")
    return n_bytes


@contextmanager
def dask_client(
    address: str | None = None,
    workers: int | None = None,
    announce: Callable[[str], None] | None = None,
    memory_limit: int = WORKER_MEMORY_LIMIT,
) -> Iterator[Client]:
    """A client on ``address``, or on a new LocalCluster of ``workers`` single-threaded processes.

    A LocalCluster binds to 127.0.0.1 and serves its dashboard there on a free port; each worker may use
    ``memory_limit`` bytes. ``announce`` gets a line with the dashboard address (and the scheduler's, for
    a cluster given by address; its workers keep the memory limits they were started with).
    """
    from distributed import Client

    if address:
        client = Client(address, timeout="30s")
        try:
            if announce:
                workers_there = len(client.scheduler_info()["workers"])
                announce(f"Dask cluster {address}: {workers_there} workers, dashboard {client.dashboard_link}")
            yield client
        finally:
            client.close()
        return
    check_workers(workers)
    n = workers or os.cpu_count() or 1
    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # bokeh warns that its Host check allows '*'; the dashboard only listens on 127.0.0.1.
    logging.getLogger("bokeh").setLevel(logging.ERROR)
    # Measured (bench/ingest.py): Dask's statistical profiler and its low malloc trim threshold slow
    # PNG decoding in workers by about 10 %; a local ingest cluster needs neither.
    worker_config = {
        "distributed.worker.profile.enabled": False,
        "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1},
        "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
    }
    with _quiet_once_stopping():
        yield from _local_client(n, memory_limit, worker_config, announce)


def _local_client(
    n: int, memory_limit: int, worker_config: dict[str, object], announce: Callable[[str], None] | None
) -> Iterator[Client]:
    """The body of :func:`dask_client` for a new LocalCluster (imports done by the caller's module)."""
    import dask
    from distributed import Client, LocalCluster

    from cxr.signals import held_back

    cluster = None
    try:
        # A signal while the cluster starts is held back until it has started (a cluster cut off half way
        # could not be closed), then raised again here, so that it is closed below.
        with held_back(raise_after=False) as signals_seen:
            # read when the scheduler and the worker processes start
            with dask.config.set(worker_config), _children_ignore_sigint():
                cluster = LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",
                    memory_limit=memory_limit,
                )
            client = Client(cluster)
        if signals_seen:
            signal.raise_signal(signals_seen[0])
    except BaseException as err:
        _silence_if_interrupted(err)
        if cluster is not None:
            cluster.close()
            _stop_resource_tracker(err)
        raise
    try:
        if announce:
            announce(
                f"Dask LocalCluster: {n} worker processes of {format_memory(memory_limit)} each, "
                f"dashboard {client.dashboard_link}"
            )
        yield client
    except BaseException as err:
        _silence_if_interrupted(err, client)
        client.close()
        cluster.close()
        _stop_resource_tracker(err)
        raise
    else:  # the work is done: a signal while the cluster closes waits until it has closed, then stops the command
        with held_back():
            client.close()
            cluster.close()
