"""The retry policy every task shares, as keyword arguments for Prefect's ``@task`` decorator.

Storage hiccups are retried inside :mod:`cxr.storage` within seconds; these retries cover longer
outages: a store or server that is back within half a minute.
"""

RETRY = {"retries": 2, "retry_delay_seconds": [5, 30]}
