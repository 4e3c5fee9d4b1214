"""The retry policy every task shares (Prefect's decorator carries it).

Storage hiccups are retried inside :mod:`cxr.storage` within seconds; these retries cover longer
outages: a store or server that is back within half a minute.
"""

RETRIES = 2
RETRY_DELAY_SECONDS = [5, 30]
