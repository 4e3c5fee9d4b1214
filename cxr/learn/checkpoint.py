"""Checkpoints: one dict written by rank 0 through the storage layer, read with ``weights_only=True``.

- ``checkpoint.pt`` (:class:`TrainingCheckpoint`, for ``--resume``): the model without the DDP wrapper,
  optimizer, scheduler, epoch, step, step within the epoch, config, label names, digests.
- ``model.pt`` (:class:`ModelBundle`, for evaluation, prediction and ``--init-from``): the model, its
  name and input size, the label names, the per-finding thresholds chosen on validation, the digests,
  and each rank's weight fingerprint.

Both are plain dicts on disk (tensors and Python values only, so ``weights_only=True`` can read them);
the classes give them names and check their keys when they are read.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from cxr import storage
from cxr.learn.config import MLFLOW_SCHEMES


def save(obj: Mapping[str, Any], url: str) -> None:
    """Serialize with torch.save and write atomically (local rename or a whole-object put)."""
    buf = io.BytesIO()
    torch.save(dict(obj), buf)
    storage.write_bytes(url, buf.getvalue(), durable=True)


def load(url: str) -> dict[str, Any]:
    """Read a checkpoint or bundle from a path or ``s3://`` URL; only tensors and plain values are accepted."""
    return from_bytes(storage.read_bytes(url), url)


def from_bytes(data: bytes, source: str = "the file") -> dict[str, Any]:
    """A checkpoint or bundle's plain contents; ``ValueError`` naming ``source`` when the bytes are none."""
    try:
        plain = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:  # torch's ways of saying "not ours"
        # torch's own text is not repeated: for a refused pickle it advises weights_only=False, never safe here
        raise ValueError(
            f"{source} cannot be loaded as a model bundle or checkpoint: not a file cxr wrote, or damaged "
            f"({type(err).__name__})"
        ) from None
    if not isinstance(plain, dict):
        kind = type(plain).__name__
        raise ValueError(f"{source} cannot be loaded as a model bundle or checkpoint: it holds a {kind}")
    return plain


def exists(url: str) -> bool:
    return storage.exists(url)


def _from_mapping(cls: type, data: Mapping[str, Any], source: str) -> Any:
    names = [f.name for f in fields(cls) if f.default is dataclasses.MISSING]
    missing = [name for name in names if name not in data]
    if missing:
        raise ValueError(f"{source} is not a {cls.__name__}: no {', '.join(repr(m) for m in missing)}")
    return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class ModelBundle:
    """``model.pt``: a trained model and what is needed to use and trace it."""

    model: Mapping[str, torch.Tensor]  # state dict, without the DDP wrapper
    model_name: str
    image_size: int
    label_names: tuple[str, ...] | list[str]
    thresholds: tuple[float, ...] | list[float] = ()  # per finding, chosen on val
    threshold_rule: str = "youden on val"
    manifest_digest: str | None = None
    dataset_digest: str | None = None
    strategy: str | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the TrainConfig, as plain values
    val_auroc: Mapping[str, float | None] = dataclasses.field(default_factory=dict)
    val_mean_auroc: float | None = None
    world_size: int = 1
    rank_fingerprints: tuple[str, ...] | list[str] = ()
    steps: int = 0
    shard_size: int | None = None  # the shards it trained on; inputs are made from that size (None: older bundles)
    tracking_run_id: str | None = None  # the MLflow run that trained it (None: tracking off, or an older bundle)
    # the findings its training rows label (a CheXpert source labels 7); empty: all 14 (older bundles)
    trained_findings: tuple[str, ...] | list[str] = ()

    @property
    def findings_learned(self) -> tuple[str, ...]:
        return tuple(self.trained_findings) or tuple(self.label_names)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(self.to_dict(), buf)
        return buf.getvalue()

    def save(self, url: str) -> None:
        save(self.to_dict(), url)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "the bundle") -> ModelBundle:
        return _from_mapping(cls, data, source)

    @classmethod
    def read(cls, uri: str) -> ModelBundle:
        """A bundle from a path, an ``s3://`` URL, or an MLflow URI whose run logged one (``models:/NAME@ALIAS``)."""
        if uri.startswith(MLFLOW_SCHEMES):  # kept in a local cache by version (cxr.tracking.model_cache)
            from cxr.tracking.model_cache import bundle_bytes, forget

            data = bundle_bytes(uri)  # an unknown name or alias raises here, once
            try:
                plain = from_bytes(data, uri)
            except ValueError:  # a cached file damaged on disk: fetched again
                forget(uri)
                plain = from_bytes(bundle_bytes(uri), uri)
            return cls.from_dict(plain, uri)
        return cls.from_dict(load(uri), uri)


@dataclass(frozen=True)
class TrainingCheckpoint:
    """``checkpoint.pt``: where a run stands, to resume it at the exact step."""

    model: Mapping[str, torch.Tensor]
    optimizer: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    epoch: int  # the epoch to continue with
    step_in_epoch: int  # the step within it to continue at
    step: int  # steps done in total
    config: Mapping[str, Any]
    label_names: tuple[str, ...] | list[str]
    manifest_digest: str
    dataset_digest: str
    world_size: int | None = None  # None: a checkpoint from before these were saved
    batch_size: int | None = None  # per process
    rng_states: list[torch.Tensor] | None = None  # torch's CPU generator state, one per rank
    cuda_rng_states: list[torch.Tensor] | None = None  # and each rank's GPU generator, on GPU runs
    tracking_run_id: str | None = None  # the MLflow run a resumed run goes on logging to

    def save(self, url: str) -> None:
        save({f.name: getattr(self, f.name) for f in fields(self)}, url)

    @classmethod
    def read(cls, url: str) -> TrainingCheckpoint:
        return _from_mapping(cls, load(url), url)
