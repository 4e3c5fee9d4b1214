"""Running a model on shards: what training's validation, ``cxr evaluate``, the study and the tracking
plug-in share. Nothing here trains.

- :func:`load_model`: a ``model.pt`` bundle (path, ``s3://``, or an MLflow URI) as an eval-mode model.
- :func:`predict_rows`: probabilities for rows of a split, spread over the ranks and gathered back in
  row order (one process is the special case of one rank).
- :func:`to_device`, :func:`autocast`: the batch's way onto the device, the same in training.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import nn

from cxr.data.version import DatasetVersion
from cxr.findings import FINDINGS
from cxr.learn.augment import resize
from cxr.learn.checkpoint import ModelBundle
from cxr.learn.distributed import DistInfo, all_gather_rows
from cxr.learn.models import Classifier, build_model
from cxr.learn.reference import check_device
from cxr.learn.shards import AnyShardStore, Rows, ShardStore, gather, split_rows

PREDICT_BATCH = 64  # images per forward pass when predicting; memory, not results, depends on it


def single_process(device: str | torch.device = "cpu") -> DistInfo:
    """The :class:`DistInfo` of a process that is not part of a process group (``auto``: the GPU if any)."""
    if isinstance(device, str):
        check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but no CUDA GPU is available here (use auto or cpu)")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif chosen.type != "cpu":
        check_device(chosen.type)  # a torch.device of another kind
    return DistInfo(chosen)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1], where they are (on the device: a quarter of the bytes travel)."""
    return images.float().div_(255.0)


def to_device(batch: np.ndarray, info: DistInfo) -> torch.Tensor:
    """uint8 [B, S, S] -> float [B, 1, S, S] in [0, 1] on the device (pinned, non-blocking on GPU)."""
    tensor = torch.from_numpy(batch).unsqueeze(1)
    if info.device.type == "cuda":
        tensor = tensor.pin_memory().to(info.device, non_blocking=True)
    return to_float(tensor)


def autocast(info: DistInfo, amp: str = "auto") -> AbstractContextManager[object]:
    """bf16 autocast on GPU (``amp`` auto or bf16); nothing on CPU, where bf16 is slower."""
    if info.device.type == "cuda" and amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def load_model(uri: str, device: str | torch.device = "cpu") -> tuple[Classifier, ModelBundle]:
    """A ``model.pt`` bundle (local, ``s3://`` or an MLflow model URI) as an eval-mode model and its bundle."""
    bundle = ModelBundle.read(uri)
    return bundle_model(bundle, device, uri), bundle


def bundle_model(bundle: ModelBundle, device: str | torch.device = "cpu", source: str = "the bundle") -> Classifier:
    """The eval-mode model a bundle holds."""
    if list(bundle.label_names) != list(FINDINGS):
        raise ValueError(f"{source} predicts {list(bundle.label_names)}, not the 14 findings")
    model = build_model(bundle.model_name)
    model.load_state_dict(bundle.model)
    return model.to(device).eval()


def shard_store(version: DatasetVersion, bundle: ModelBundle) -> ShardStore:
    """The version's shards a model reads: the size it trained on if the version has it (so its inputs are
    made as in training), else the smallest at least its input size, else the largest."""
    sizes = sorted(version.sizes)
    if bundle.shard_size in sizes:
        return ShardStore(version.path, version.digest, int(bundle.shard_size))
    size = next((s for s in sizes if s >= bundle.image_size), sizes[-1])
    return ShardStore(version.path, version.digest, size)


@torch.no_grad()
def predict_rows(
    model: nn.Module,
    store: AnyShardStore,
    rows: Rows,
    image_size: int,
    info: DistInfo,
    amp: str = "off",
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels for ``rows``, split over ranks and gathered back in row order."""
    model.eval()
    mine = np.arange(info.rank, len(rows), info.world_size)
    probs = []
    for start in range(0, len(mine), PREDICT_BATCH):
        batch = mine[start : start + PREDICT_BATCH]
        images = resize(to_device(gather(store, rows, batch), info), image_size)
        if channels_last and info.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(info, amp):
            probs.append(torch.sigmoid(model(images).float()))
    local = torch.cat(probs) if probs else torch.zeros((0, len(FINDINGS)), device=info.device)
    order = torch.from_numpy(mine).to(info.device)
    all_probs = all_gather_rows(local, info)
    all_order = all_gather_rows(order, info)
    result = torch.empty_like(all_probs)
    result[all_order] = all_probs
    return result.cpu().numpy(), rows.labels


def predict_split(
    model: nn.Module, bundle: ModelBundle, version: DatasetVersion, split: str | None
) -> tuple[Rows, np.ndarray, np.ndarray]:
    """Rows, probabilities and labels of one split of a version (``None``: every row), in this process."""
    metadata = version.metadata()
    rows = split_rows(metadata, split, expand_repeats=False)
    info = single_process(next(model.parameters()).device)
    probs, labels = predict_rows(model, shard_store(version, bundle), rows, bundle.image_size, info)
    return rows, probs, labels
