"""Quiet, offline defaults for the services cxr starts or talks to: the one place they are written.

Each is a default (``setdefault``): a user's own setting wins. The reasons:

- Prefect's server and MLflow would send usage statistics; this project runs where the network may be
  closed, and a blocked call costs seconds.
- ``mlflow server`` starts seven extra job-runner processes unless job execution is off.
- MLflow's HTTP client retries a dead server for minutes by default; training should notice within
  seconds and go on (:mod:`cxr.tracking.mlflow_run` keeps the backlog and retries it itself).
- MLflow writes "View run ... at: <tracking URI>" straight to stdout when a run ends, past every
  redaction (:mod:`cxr.redact`): a URI with credentials in it would be printed as it is.
- MLflow logs at INFO to stderr ("Creating initial MLflow database tables..."): a command's own
  lines (one ``error:`` line for a user error) would drown in them. Warnings and errors still show.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

OFFLINE_ENV: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}


def set_offline_defaults(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Fill in :data:`OFFLINE_ENV` where ``env`` (default: this process's environment) has no value; returns ``env``."""
    target = os.environ if env is None else env
    for key, value in OFFLINE_ENV.items():
        target.setdefault(key, value)
    return target
