"""Reading training images from a dataset version's uint8 shards, memory-mapped.

Shards on S3 (or any remote store) are copied once into a local cache (``CXR_CACHE`` or
``~/.cache/cxr``, under the dataset digest), then memory-mapped like local ones. A batch is gathered
shard by shard with numpy indexing: no per-image decoding, no Python work per pixel.

Every shard is checked against the sha256 its version's ``dataset.json`` records: a remote copy before
it enters the cache, a local file (or a cached copy) the first time this process maps it. A cached
copy that fails is fetched again once; anything else raises :class:`IntegrityError` naming the file.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxr import storage
from cxr.data.integrity import FileHash, IntegrityError, verify_bytes, verify_file
from cxr.data.version import DatasetNotFoundError, open_version, shard_url
from cxr.findings import FINDING_COLUMNS

# Each memory map holds a file descriptor; NIH has ~1,750 shards a size and `ulimit -n` is often 1024.
MAX_OPEN_SHARDS = 256
FETCH_THREADS = 8  # parallel copies of remote shards into the local cache


def cache_root() -> Path:
    return Path(os.environ.get("CXR_CACHE", Path.home() / ".cache" / "cxr"))


class ShardStore:
    """The shards of one dataset version at one size, memory-mapped on use, at most ``max_open`` at once.

    Remote shards (S3) are read from a local copy in :func:`cache_root`; :meth:`fetch` makes those copies
    ahead of time (training: once per node, by its local rank 0, before the first step). ``hashes``
    (shard name -> hash) default to what the version's ``dataset.json`` records.
    """

    def __init__(
        self,
        version_path: str,
        digest: str,
        size: int,
        max_open: int = MAX_OPEN_SHARDS,
        hashes: Mapping[str, FileHash] | None = None,
    ) -> None:
        self.version_path = version_path
        self.digest = digest
        self.size = size
        self.max_open = max_open
        self._hashes = hashes
        self._hashes_read = hashes is not None
        self._verified: set[str] = set()  # shards whose local file this process has checked
        self._arrays: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.version_path)

    def _expected(self, shard: str) -> FileHash | None:
        """What a shard's bytes must be; None for a version written before shard hashes."""
        if not self._hashes_read:
            version = open_version(self.version_path)
            if version.digest != self.digest:
                raise DatasetNotFoundError(f"{self.version_path} holds version {version.digest}, not {self.digest}")
            integrity = version.integrity
            self._hashes = None if integrity is None else dict(integrity.shards.get(str(self.size), {}))
            self._hashes_read = True
        if self._hashes is None:
            return None
        expected = self._hashes.get(shard)
        if expected is None:
            raise IntegrityError(
                shard_url(self.version_path, self.size, shard), "the version's dataset.json records no such shard"
            )
        return expected

    def _cached(self, shard: str) -> Path:
        return cache_root() / "shards" / self.digest / str(self.size) / f"{shard}.npy"

    def _fetch_one(self, shard: str) -> bool:
        local = self._cached(shard)
        if local.exists():
            return False
        url = shard_url(self.version_path, self.size, shard)
        data = storage.read_bytes(url)
        expected = self._expected(shard)
        if expected is not None:
            verify_bytes(url, data, expected)  # a bad copy never enters the cache
        local.parent.mkdir(parents=True, exist_ok=True)
        storage.write_bytes(str(local), data)  # atomic: a partial copy never shows
        self._verified.add(shard)
        return True

    def fetch(self, shards: Iterable[str], threads: int = FETCH_THREADS) -> int:
        """Copy the shards not yet in the local cache (remote versions only); how many were copied."""
        if not self.remote:
            return 0
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return sum(pool.map(self._fetch_one, sorted(set(shards))))

    def _local_path(self, shard: str) -> str:
        """A checked local file of the shard: the version's own, or the cached copy of a remote one."""
        if not self.remote:
            path = shard_url(self.version_path, self.size, shard)
            self._verify_local(shard, path)
            return path
        self._fetch_one(shard)
        path = str(self._cached(shard))
        try:
            self._verify_local(shard, path)
        except IntegrityError:  # a damaged cache copy: fetch it again, checked on the way in
            os.unlink(path)
            self._fetch_one(shard)
        return path

    def _verify_local(self, shard: str, path: str) -> None:
        if shard in self._verified:
            return
        expected = self._expected(shard)
        if expected is not None:
            verify_file(path, expected)
        self._verified.add(shard)

    def array(self, shard: str) -> np.ndarray:
        if shard in self._arrays:
            self._arrays.move_to_end(shard)
            return self._arrays[shard]
        array = np.load(self._local_path(shard), mmap_mode="r", allow_pickle=False)
        if array.ndim != 3 or array.shape[1:] != (self.size, self.size) or array.dtype != np.uint8:
            raise ValueError(f"shard {shard} at {self.size} px has shape {array.shape} and dtype {array.dtype}")
        self._arrays[shard] = array
        if len(self._arrays) > self.max_open:
            self._arrays.popitem(last=False)  # its map (and file descriptor) closes with the last reference
        return array

    @property
    def open_shards(self) -> int:
        return len(self._arrays)


class MixedShardStore:
    """The shards of several dataset versions at one size, for a mixed manifest, whose rows name their shards
    ``<digest>/<shard>``: one :class:`ShardStore` per version, used as one."""

    def __init__(self, versions: Iterable[tuple[str, str]], size: int, max_open: int = MAX_OPEN_SHARDS) -> None:
        versions = list(versions)  # (version path, digest)
        per_store = max(1, max_open // max(len(versions), 1))
        self.size = size
        self.stores = {digest: ShardStore(path, digest, size, per_store) for path, digest in versions}

    def _split(self, shard: str) -> tuple[ShardStore, str]:
        digest, _, name = shard.partition("/")
        if digest not in self.stores or not name:
            raise ValueError(f"shard {shard!r} names none of this manifest's versions ({', '.join(self.stores)})")
        return self.stores[digest], name

    @property
    def remote(self) -> bool:
        return any(store.remote for store in self.stores.values())

    def fetch(self, shards: Iterable[str], threads: int = FETCH_THREADS) -> int:
        by_store: dict[str, list[str]] = {}
        for shard in shards:
            store, name = self._split(shard)
            by_store.setdefault(store.digest, []).append(name)
        return sum(self.stores[d].fetch(names, threads) for d, names in by_store.items())

    def array(self, shard: str) -> np.ndarray:
        store, name = self._split(shard)
        return store.array(name)

    @property
    def open_shards(self) -> int:
        return sum(store.open_shards for store in self.stores.values())


AnyShardStore = ShardStore | MixedShardStore


@dataclass(frozen=True)
class Rows:
    """Rows of a split (repeats expanded when asked), aligned arrays."""

    image_ids: list[str]
    shard_codes: np.ndarray  # int32 index into ``shards``
    shard_index: np.ndarray  # int64 row within the shard
    labels: np.ndarray  # float32 [n, 14]; NaN where the source does not label the finding (missing, not negative)
    shards: list[str]
    patient_ids: np.ndarray  # int64 [n]: the unit the bootstrap resamples

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
    return Rows(
        image_ids=part["image_id"].to_pylist(),
        shard_codes=shard_codes,
        shard_index=part["shard_index"].to_numpy(zero_copy_only=False).astype(np.int64),
        labels=finding_labels(part),
        shards=shards,
        patient_ids=part["patient_id"].to_numpy(zero_copy_only=False).astype(np.int64),
    )


def finding_labels(table: pa.Table) -> np.ndarray:
    """float32 [rows, 14] of a table's finding columns (nullable bools): 1, 0, and NaN where null (missing)."""
    columns = [table[c].cast(pa.float32()).to_numpy(zero_copy_only=False) for c in FINDING_COLUMNS]
    return np.column_stack(columns).reshape(table.num_rows, len(FINDING_COLUMNS)).astype(np.float32, copy=False)


def gather(store: AnyShardStore, rows: Rows, positions: np.ndarray) -> np.ndarray:
    """uint8 [len(positions), size, size] for the given row positions, shard by shard."""
    out = np.empty((len(positions), store.size, store.size), dtype=np.uint8)
    codes = rows.shard_codes[positions]
    for code in np.unique(codes):
        where = np.flatnonzero(codes == code)
        array = store.array(rows.shards[int(code)])
        out[where] = array[rows.shard_index[positions[where]]]
    return out
