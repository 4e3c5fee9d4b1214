"""The rows a manifest starts from: one version's metadata, or several versions' together (a mixed manifest)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from cxr.data.splits import SPLITS
from cxr.data.version import DatasetVersion
from cxr.findings import FINDING_COLUMNS

COLUMNS = ["image_id", "patient_id", "split", *FINDING_COLUMNS, "source_format", "shard", "shard_index"]


def source_key(version: DatasetVersion) -> str:
    """How a manifest names a version's source: its format and digest (``chexpert:0f26b3df1549ff0d``)."""
    return f"{version.info.get('source', {}).get('format', 'nih')}:{version.digest}"


def manifest_rows(versions: Sequence[DatasetVersion]) -> pa.Table:
    """The metadata rows of every version, in split order, then by version, then by image id; a mixed
    manifest's shards named by version (``<digest>/<shard>``) and its rows' ``_source`` kept."""
    tables = []
    for rank, version in enumerate(versions):
        table = version.metadata(columns=COLUMNS)
        if len(versions) > 1:
            table = table.set_column(
                table.column_names.index("shard"),
                "shard",
                pc.binary_join_element_wise(version.digest, table["shard"], "/"),
            )
        table = table.append_column("_version", pa.array([rank] * table.num_rows, pa.int32()))
        tables.append(table.append_column("_source", pa.array([source_key(version)] * table.num_rows, pa.string())))
    metadata = pa.concat_tables(tables)
    split_rank = pc.index_in(metadata["split"], pa.array(list(SPLITS)))
    order = [("_rank", "ascending"), ("_version", "ascending"), ("image_id", "ascending")]
    return metadata.append_column("_rank", split_rank).sort_by(order).drop_columns(["_rank", "_version"])


def check_versions(versions: Sequence[DatasetVersion]) -> None:
    digests = [v.digest for v in versions]
    if not versions:
        raise ValueError("a manifest needs at least one dataset version")
    if len(set(digests)) != len(digests):
        raise ValueError(f"the same dataset version is given twice: {', '.join(digests)}")
    if not set.intersection(*(set(v.sizes) for v in versions)):
        sizes = "; ".join(f"{v.digest}: {v.sizes}" for v in versions)
        raise ValueError(f"the versions share no shard size ({sizes}); ingest them with a common --size")
