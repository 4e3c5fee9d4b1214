"""Reading training images from a dataset version's uint8 shards, memory-mapped.

Shards on S3 (or any remote store) are copied once into a local cache (``CXR_CACHE`` or
``~/.cache/cxr``, under the dataset digest), then memory-mapped like local ones. A batch is gathered
shard by shard with numpy indexing: no per-image decoding, no Python work per pixel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxr import storage
from cxr.data.version import shard_url
from cxr.findings import FINDING_COLUMNS


def cache_root() -> Path:
    return Path(os.environ.get("CXR_CACHE", Path.home() / ".cache" / "cxr"))


class ShardStore:
    """The shards of one dataset version at one size, memory-mapped on first use."""

    def __init__(self, version_path: str, digest: str, size: int) -> None:
        self.version_path = version_path
        self.digest = digest
        self.size = size
        self._arrays: dict[str, np.ndarray] = {}

    def _local_path(self, shard: str) -> str:
        url = shard_url(self.version_path, self.size, shard)
        if not storage.is_remote(url):
            return url
        local = cache_root() / "shards" / self.digest / str(self.size) / f"{shard}.npy"
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            storage.write_bytes(str(local), storage.read_bytes(url))  # atomic: a partial copy never shows
        return str(local)

    def array(self, shard: str) -> np.ndarray:
        if shard not in self._arrays:
            array = np.load(self._local_path(shard), mmap_mode="r", allow_pickle=False)
            if array.ndim != 3 or array.shape[1:] != (self.size, self.size) or array.dtype != np.uint8:
                raise ValueError(f"shard {shard} at {self.size} px has shape {array.shape} and dtype {array.dtype}")
            self._arrays[shard] = array
        return self._arrays[shard]


@dataclass(frozen=True)
class Rows:
    """Rows of a split (repeats expanded when asked), aligned arrays."""

    image_ids: list[str]
    shard_codes: np.ndarray  # int32 index into ``shards``
    shard_index: np.ndarray  # int64 row within the shard
    labels: np.ndarray  # float32 [n, 14]
    shards: list[str]

    def __len__(self) -> int:
        return len(self.image_ids)


def split_rows(table: pa.Table, split: str | None, expand_repeats: bool) -> Rows:
    """The rows of ``split`` (``None``: every row) from a manifest or metadata table, each repeated
    ``repeat`` times if asked."""
    part = table if split is None else table.filter(pc.equal(table["split"], split))
    if expand_repeats and "repeat" in part.column_names:
        repeat = part["repeat"].to_numpy()
        take = np.repeat(np.arange(part.num_rows), repeat)
        part = part.take(pa.array(take))
    encoded = pc.dictionary_encode(part["shard"]).combine_chunks()
    shards = encoded.dictionary.to_pylist()
    shard_codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    labels = np.column_stack([part[c].to_numpy(zero_copy_only=False) for c in FINDING_COLUMNS]).astype(np.float32)
    return Rows(
        image_ids=part["image_id"].to_pylist(),
        shard_codes=shard_codes,
        shard_index=part["shard_index"].to_numpy(zero_copy_only=False).astype(np.int64),
        labels=labels.reshape(part.num_rows, len(FINDING_COLUMNS)),
        shards=shards,
    )


def gather(store: ShardStore, rows: Rows, positions: np.ndarray) -> np.ndarray:
    """uint8 [len(positions), size, size] for the given row positions, shard by shard."""
    out = np.empty((len(positions), store.size, store.size), dtype=np.uint8)
    codes = rows.shard_codes[positions]
    for code in np.unique(codes):
        where = np.flatnonzero(codes == code)
        array = store.array(rows.shards[int(code)])
        out[where] = array[rows.shard_index[positions[where]]]
    return out
