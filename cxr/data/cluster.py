"""Dask clients: a LocalCluster by default, any running cluster by its address."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster


@contextmanager
def dask_client(
    address: str | None = None, workers: int | None = None, announce: Callable[[str], None] | None = None
) -> Iterator[Client]:
    """A client on ``address``, or on a new LocalCluster of ``workers`` single-threaded processes.

    A LocalCluster binds to 127.0.0.1 and serves its dashboard there on a free port; ``announce`` gets
    a line with the dashboard address (and the scheduler's, for a cluster given by address).
    """
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
    n = workers or os.cpu_count() or 1
    if n < 1:
        raise ValueError(f"workers must be >= 1, got {n}")
    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # bokeh warns that its Host check allows '*'; the dashboard only listens on 127.0.0.1.
    logging.getLogger("bokeh").setLevel(logging.ERROR)
    # Measured (bench/ingest.py): Dask's statistical profiler and its low malloc trim threshold slow
    # PNG decoding in workers by about 10 %; a local ingest cluster needs neither.
    worker_config = {
        "distributed.worker.profile.enabled": False,
        "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1},
    }
    with dask.config.set(worker_config):  # read when the worker processes are spawned
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            memory_limit=0,  # leave memory to the OS; parts are sized to stay small
        )
    client = Client(cluster)
    try:
        if announce:
            announce(f"Dask LocalCluster: {n} worker processes, dashboard {client.dashboard_link}")
        yield client
    finally:
        client.close()
        cluster.close()
