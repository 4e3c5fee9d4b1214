"""Content digests: sha256 over a canonical text form of settings and tables.

Canonical: JSON with sorted keys and no spaces, one line per row, rows sorted by given keys, every
table announced with its column names and row count. Arrow IPC or Parquet bytes are not used: their
layout may change between library versions while the content does not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

DIGEST_CHARS = 16


_BATCH_ROWS = 4096  # rows turned into Python dicts at once (all 112,120 of NIH's at once took about 350 MB)


def canonical_digest(
    header: dict[str, Any],
    tables: Sequence[tuple[str, pa.Table, list[str]]],
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> str:
    """sha256 of ``header`` and each ``(name, table, sort_keys)``, first :data:`DIGEST_CHARS` hex chars.

    ``transform`` may rewrite each row before it is hashed (e.g. make paths relative).
    """
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        h.update(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())
        h.update(b"\n")

    feed(header)
    for name, table, keys in tables:
        feed({"table": name, "columns": table.schema.names, "rows": table.num_rows})
        ordered = table.sort_by([(k, "ascending") for k in keys])
        for batch in ordered.to_batches(max_chunksize=_BATCH_ROWS):  # rows as dicts a batch at a time: flat memory
            for row in batch.to_pylist():
                feed(transform(row) if transform else row)
    return h.hexdigest()[:DIGEST_CHARS]
