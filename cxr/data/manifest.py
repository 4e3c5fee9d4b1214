"""Manifests: the exact list of rows a training run reads, balanced by one of three strategies.

- ``none``: every training row once, plain loss.
- ``weighted``: every training row once; the training split's per-finding weights
  (``w_pos = freq_neg``, ``w_neg = freq_pos``) go into ``manifest.json`` for the weighted loss.
- ``resample``: training rows repeated (``repeat > 1``) or dropped until balanced, plain loss.
  With ``target``: that finding's positives and negatives end exactly 1:1, by repeating the minority
  (``mode="over"``) or dropping part of the majority (``mode="under"``). Without: class-aware
  oversampling until every finding's share of positive draws reaches ``floor``. The cost the source
  warns about (the same few positive images, seen again and again) is reported: the largest repeat
  count, which image it is, and how many distinct images carry each finding's positives.

Validation and test rows are never resampled or weighted. Repeats are counts, never copies of images.

A mixed manifest draws on several dataset versions at once (e.g. an NIH-format and a CheXpert-format
source): each keeps its own splits, the strategy balances their training rows together (a finding one
source does not label counts only where it is labelled), and each row's ``shard`` names its version
(``<digest>/<shard>``). ``manifest.json`` lists the versions and the rows each source gives every split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxr import storage
from cxr.data.balance import balance_binary, oversample_to_floor, positive_share
from cxr.data.integrity import IntegrityError
from cxr.data.manifest_rows import check_versions, manifest_rows
from cxr.data.splits import SPLITS
from cxr.data.stats import finding_stats
from cxr.data.version import DatasetVersion
from cxr.digest import canonical_digest
from cxr.findings import FINDING_COLUMNS, FINDINGS, column_name
from cxr.records import from_json, to_json

STRATEGIES = ("none", "weighted", "resample")
MANIFEST_SCHEMA_VERSION = 2  # 2: source_format column; several dataset versions (mixed manifests)


@dataclass(frozen=True)
class ManifestConfig:
    """How to build a manifest."""

    strategy: str = "none"
    target: str | None = None  # resample: the finding to balance 1:1; None: the multi-label floor
    mode: str = "over"  # resample with a target: "over" repeats the minority, "under" drops majority rows
    floor: float = 0.05  # resample without a target: the least share of positive draws per finding
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.target is not None:
            if self.strategy != "resample":
                raise ValueError(f"target {self.target!r} only applies to strategy 'resample'")
            column_name(self.target)  # raises for an unknown finding
        if self.mode not in ("over", "under"):
            raise ValueError(f"mode must be 'over' or 'under', got {self.mode!r}")
        if not 0 < self.floor <= 0.5:
            raise ValueError(f"floor must be in (0, 0.5], got {self.floor}")


@dataclass(frozen=True)
class DatasetRef:
    """The dataset version a manifest was made from."""

    digest: str
    root: str
    shard_sizes: tuple[int, ...]

    @property
    def path(self) -> str:
        return storage.join(self.root, self.digest)


@dataclass(frozen=True)
class ClassWeight:
    w_pos: float
    w_neg: float


@dataclass(frozen=True)
class SplitDraws:
    rows: int
    draws: int  # rows counted with their repeats


@dataclass(frozen=True)
class Reuse:
    """What resampling costs: the same positive images seen again and again."""

    max_repeat: int
    most_repeated_image: str
    rows_repeated: int
    rows_dropped: int
    distinct_positive_images: Mapping[str, int]


@dataclass(frozen=True)
class ManifestInfo:
    """``manifest.json``: the settings, the digest, and what balancing did to the training split."""

    digest: str
    schema_version: int
    strategy: str
    target: str | None
    mode: str | None
    floor: float | None
    seed: int
    dataset_digest: str
    class_weights: Mapping[str, ClassWeight] | None  # strategy "weighted" only
    dataset: DatasetRef  # the first (or only) version
    findings: tuple[str, ...]
    splits: Mapping[str, SplitDraws]
    train_prevalence: Mapping[str, Mapping[str, float]]  # "before" and "after": share of positive draws
    reuse: Reuse
    config: ManifestConfig
    floor_unreachable: tuple[str, ...] | None = None  # resample without a target: findings with no training positive
    datasets: tuple[DatasetRef, ...] = ()  # every version the rows come from (a mixed manifest: several)
    sources: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # source -> split -> rows

    @property
    def versions(self) -> tuple[DatasetRef, ...]:
        """The versions the rows come from (manifests written before mixed ones name one)."""
        return self.datasets or (self.dataset,)

    @property
    def mixed(self) -> bool:
        return len(self.versions) > 1

    @property
    def shard_sizes(self) -> tuple[int, ...]:
        """The shard sizes every version has."""
        return tuple(sorted(set.intersection(*(set(d.shard_sizes) for d in self.versions))))

    def to_json(self) -> str:
        return to_json(self) + "\n"

    def loss_weights(self) -> tuple[list[float], list[float]] | None:
        """``(w_pos, w_neg)`` in the order of FINDINGS, or None when the loss is unweighted."""
        if self.class_weights is None:
            return None
        return [self.class_weights[f].w_pos for f in FINDINGS], [self.class_weights[f].w_neg for f in FINDINGS]


@dataclass(frozen=True)
class Manifest:
    table: pa.Table
    info: ManifestInfo

    @property
    def digest(self) -> str:
        return self.info.digest


def _labels(table: pa.Table) -> np.ndarray:
    """The finding columns as float: 1, 0, or NaN where the label is missing."""
    columns = [table[c].cast(pa.float64()).to_numpy(zero_copy_only=False) for c in FINDING_COLUMNS]
    return np.column_stack(columns) if columns else np.zeros((0, len(FINDINGS)))


def build_manifest(versions: DatasetVersion | Sequence[DatasetVersion], config: ManifestConfig) -> Manifest:
    """The manifest of one dataset version, or of several together (mixed), under ``config`` (deterministic for
    a given seed)."""
    versions = [versions] if isinstance(versions, DatasetVersion) else list(versions)
    check_versions(versions)
    version = versions[0]
    metadata = manifest_rows(versions)
    sources = metadata["_source"]
    metadata = metadata.drop_columns(["_source"])
    is_train = pc.equal(metadata["split"], "train").to_numpy(zero_copy_only=False)
    train_idx = np.flatnonzero(is_train)
    if len(train_idx) == 0:
        raise ValueError(f"dataset {'+'.join(v.digest for v in versions)} has no training rows")
    labels = _labels(metadata)
    train_labels = labels[train_idx]
    rng = np.random.default_rng(config.seed)

    repeat = np.ones(metadata.num_rows, dtype=np.int64)
    if config.strategy == "resample":
        if config.target:
            y = train_labels[:, FINDINGS.index(config.target)]
            n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
            if n_pos == 0 or n_neg == 0:
                raise ValueError(
                    f"cannot balance {config.target}: the training split has {n_pos} positives and {n_neg} negatives"
                    + (f" ({int(np.isnan(y).sum())} images do not label it)" if np.isnan(y).any() else "")
                )
            repeat[train_idx] = balance_binary(y, config.mode, rng)
        else:
            unreachable = [f for f, n in zip(FINDINGS, np.nansum(train_labels, axis=0), strict=True) if n == 0]
            if len(unreachable) == len(FINDINGS):
                raise ValueError("cannot oversample: the training split has no positive of any finding")
            repeat[train_idx] = oversample_to_floor(train_labels, config.floor, rng)

    weights = None
    before = finding_stats(
        len(train_idx), np.nansum(train_labels, axis=0).tolist(), (~np.isnan(train_labels)).sum(axis=0).tolist()
    )
    if config.strategy == "weighted":
        weights = {f: ClassWeight(s.w_pos, s.w_neg) for f, s in before.items()}

    keep = repeat > 0
    table = metadata.filter(pa.array(keep)).append_column("repeat", pa.array(repeat[keep], pa.int32()))
    columns = ["image_id", "patient_id", "split", "repeat", *FINDING_COLUMNS, "source_format", "shard", "shard_index"]
    table = table.select(columns)
    kept_sources = sources.filter(pa.array(keep))

    train_repeat = repeat[train_idx]
    reused = int(np.argmax(train_repeat))
    settings = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "strategy": config.strategy,
        "target": config.target,
        "mode": config.mode if config.strategy == "resample" and config.target else None,
        "floor": config.floor if config.strategy == "resample" and not config.target else None,
        "seed": config.seed,
        "dataset_digest": "+".join(v.digest for v in versions),
        "class_weights": None
        if weights is None
        else {f: {"w_pos": w.w_pos, "w_neg": w.w_neg} for f, w in weights.items()},
    }
    digest = _digest(settings, table)
    splits = {}
    for name in SPLITS:
        mask = pc.equal(table["split"], name)
        rows, draws = pc.sum(mask).as_py() or 0, pc.sum(pc.if_else(mask, table["repeat"], 0)).as_py() or 0
        splits[name] = SplitDraws(int(rows), int(draws))
    unreachable = None
    if config.strategy == "resample" and not config.target:
        # a finding without a training positive cannot be oversampled: said, not hidden
        unreachable = tuple(f for f, n in zip(FINDINGS, np.nansum(train_labels, axis=0), strict=True) if n == 0)
    info = ManifestInfo(
        digest=digest,
        schema_version=MANIFEST_SCHEMA_VERSION,
        strategy=config.strategy,
        target=config.target,
        mode=settings["mode"],
        floor=settings["floor"],
        seed=config.seed,
        dataset_digest=settings["dataset_digest"],
        class_weights=weights,
        dataset=DatasetRef(version.digest, version.root, tuple(version.sizes)),
        datasets=tuple(DatasetRef(v.digest, v.root, tuple(v.sizes)) for v in versions),
        sources=_source_counts(kept_sources, table["split"]),
        findings=tuple(FINDINGS),
        splits=splits,
        train_prevalence={
            "before": positive_share(train_labels, np.ones(len(train_idx), np.int64)),
            "after": positive_share(train_labels, train_repeat),
        },
        reuse=Reuse(
            max_repeat=int(train_repeat.max()),
            most_repeated_image=metadata["image_id"][int(train_idx[reused])].as_py(),
            rows_repeated=int((train_repeat > 1).sum()),
            rows_dropped=int((train_repeat == 0).sum()),
            distinct_positive_images={
                f: int(((train_labels[:, i] == 1) & (train_repeat > 0)).sum()) for i, f in enumerate(FINDINGS)
            },
        ),
        config=config,
        floor_unreachable=unreachable,
    )
    return Manifest(table, info)


def _source_counts(sources: pa.ChunkedArray, splits: pa.ChunkedArray) -> dict[str, dict[str, int]]:
    """Rows per source and split."""
    grouped = (
        pa.table({"source": sources, "split": splits}).group_by(["source", "split"]).aggregate([([], "count_all")])
    )
    counts: dict[str, dict[str, int]] = {}
    for row in grouped.to_pylist():
        counts.setdefault(row["source"], dict.fromkeys(SPLITS, 0))[row["split"]] = row["count_all"]
    return dict(sorted(counts.items()))


def _digest(settings: Mapping[str, object], table: pa.Table) -> str:
    """The manifest digest: its settings and its rows (the pair ``manifest.json`` + ``manifest.parquet``).

    Rows are keyed by split, image id and shard: two versions of a mixed manifest may hold the same image id."""
    return canonical_digest(dict(settings), [("manifest", table, ["split", "image_id", "shard"])])


def _settings(info: ManifestInfo) -> dict[str, object]:
    """The settings the digest covers, as :func:`build_manifest` hashed them, from ``manifest.json``."""
    return {
        "schema_version": info.schema_version,
        "strategy": info.strategy,
        "target": info.target,
        "mode": info.mode,
        "floor": info.floor,
        "seed": info.seed,
        "dataset_digest": info.dataset_digest,
        "class_weights": None
        if info.class_weights is None
        else {f: {"w_pos": w.w_pos, "w_neg": w.w_neg} for f, w in info.class_weights.items()},
    }


class ManifestExistsError(ValueError):
    """The output folder holds another manifest; ``overwrite`` replaces it."""


def write_manifest(manifest: Manifest, out: str, overwrite: bool = False) -> bool:
    """``charts/balance.png``, ``manifest.parquet``, then ``manifest.json`` (written last: it marks completion).

    The two are a pair bound by the manifest digest, which :func:`read_manifest` checks: a reader between
    the two writes (or after a rewrite that was killed half way) gets an error, never a mixed pair.
    A folder that already holds this manifest, whole, is left as it is (returns False: unchanged); one that
    holds another manifest is refused (:class:`ManifestExistsError`) unless ``overwrite``. Returns True
    when written.
    """
    from cxr.charts import balance_chart

    try:
        existing = read_manifest_info(out)
    except FileNotFoundError:
        existing = None
    except ValueError:  # a manifest.json that is not one (edited, or of another schema)
        existing = None if overwrite else _refuse(out, "a manifest.json that cannot be read")
    if existing is not None and existing.digest == manifest.digest:
        try:
            read_manifest(out)
            return False  # the same pair, whole: unchanged
        except (FileNotFoundError, IntegrityError):
            pass  # its manifest.parquet is missing or does not match: written again below
    elif existing is not None and not overwrite:
        _refuse(
            out,
            f"manifest {existing.digest} ({existing.strategy}, seed {existing.seed}, "
            f"dataset {existing.dataset_digest})",
        )
    storage.write_bytes(storage.join(out, "charts", "balance.png"), balance_chart(manifest.info))
    storage.write_parquet(manifest.table, storage.join(out, "manifest.parquet"))
    storage.write_text(storage.join(out, "manifest.json"), manifest.info.to_json(), durable=True)
    return True


def _refuse(out: str, what: str) -> NoReturn:
    raise ManifestExistsError(f"{out} already holds {what}; choose another --out, or pass --overwrite to replace it")


def manifest_warnings(info: ManifestInfo) -> list[str]:
    """What balancing did that a person should know before training on it: findings left without a positive."""
    warnings = []
    before, reuse = info.train_prevalence["before"], info.reuse
    lost = [f for f in info.findings if before.get(f, 0) > 0 and reuse.distinct_positive_images.get(f, 0) == 0]
    if reuse.rows_dropped:
        rows = info.splits["train"].rows + reuse.rows_dropped
        line = f"undersampling keeps {info.splits['train'].rows} of {rows} training rows"
        if lost:
            line += f" and leaves {len(lost)} finding(s) without a positive: {', '.join(lost)}"
        warnings.append(line + "; --mode over keeps every row")
    elif lost:
        warnings.append(f"{len(lost)} finding(s) left without a training positive: {', '.join(lost)}")
    if info.floor_unreachable:
        warnings.append(
            f"resampling skips {', '.join(info.floor_unreachable)}: no positive in the training split "
            f"(the floor of {info.floor} is reached by the other findings only)"
        )
    return warnings


def read_manifest_info(url: str) -> ManifestInfo:
    """The ``manifest.json`` of a manifest folder."""
    return from_json(ManifestInfo, storage.read_text(storage.join(url, "manifest.json")))


class ManifestMismatchError(IntegrityError):
    """``manifest.parquet`` is not the table ``manifest.json``'s digest was made from."""


def read_manifest(url: str) -> Manifest:
    """A manifest folder written by :func:`write_manifest`, its pair checked against the manifest digest."""
    info = read_manifest_info(url)
    table_url = storage.join(url, "manifest.parquet")
    table = storage.read_parquet(table_url)
    actual = _digest(_settings(info), table)
    if actual != info.digest:
        raise ManifestMismatchError(
            table_url,
            f"its rows and the settings in manifest.json give digest {actual}, manifest.json says {info.digest}: "
            "the pair is incomplete or was edited; write the manifest again",
        )
    return Manifest(table, info)
