"""MLflow's local SQLite tracking store (``sqlite:///...``, the store ``cxr demo`` and a plain ``cxr train`` use),
read directly and read-only: which run a registered version or alias points at, and where that run keeps
its artifacts. Reading three rows this way takes milliseconds, where opening the store through MLflow's
client costs seconds of imports and schema checks.

Only MLflow's own tables are read, by their column names (``registered_model_aliases``, ``model_versions``,
``runs``; the same since MLflow 2.3). Anything unexpected (another schema, a locked or missing file, a name
that is not there) returns None, and the caller asks MLflow's client instead, which gives its own error.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing

from cxr.tracking.model_uri import ModelRef

SCHEME = "sqlite:///"


def _row(tracking: str, sql: str, parameters: tuple[object, ...]) -> tuple[object, ...] | None:
    """The first row ``sql`` gives in the store, read-only; None for no row, or anything unexpected."""
    if not tracking.startswith(SCHEME):
        return None
    path = tracking[len(SCHEME) :].split("?", 1)[0]
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as connection:
            return connection.execute(sql, parameters).fetchone()
    except sqlite3.Error:
        return None


def run_of(tracking: str, ref: ModelRef) -> str | None:
    """The run id behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` in the store, or None."""
    if ref.kind == "alias":
        sql = "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?"
        alias = _row(tracking, sql, (ref.name, ref.detail))
        version = str(alias[0]) if alias else ""
    else:
        version = ref.detail if ref.kind == "version" else ""
    if not version.isdigit():
        return None
    row = _row(
        tracking,
        "SELECT run_id FROM model_versions WHERE name = ? AND version = ? AND status = 'READY'",
        (ref.name, int(version)),
    )
    return str(row[0]) if row and row[0] else None


def artifact_location(tracking: str, run_id: str) -> str | None:
    """Where run ``run_id`` keeps its artifacts (a local path or an ``s3://`` URL), or None (not found, or
    proxied through a server: ``mlflow-artifacts:``)."""
    row = _row(tracking, "SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,))
    if not row or not row[0] or str(row[0]).startswith("mlflow-artifacts:"):
        return None
    location = str(row[0])
    return location[len("file://") :] if location.startswith("file://") else location
