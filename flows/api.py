"""Which Prefect API this process's flows report to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

DRAIN_TIMEOUT_S = 10.0


@contextmanager
def reporting_to(api_url: str | None) -> Iterator[None]:
    """Within the block, flows report to ``api_url`` (None: to what Prefect's settings name). On the way out,
    the logs and events still queued are sent while that server still answers (it is stopped next; sent
    later, they would be retried against a dead address for more than a minute before the process ends)."""
    if api_url is None:
        yield
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            yield
        finally:
            APILogWorker.drain_all(timeout=DRAIN_TIMEOUT_S)
            EventsWorker.drain_all(timeout=DRAIN_TIMEOUT_S)
