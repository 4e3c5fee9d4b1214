"""Checkpoints: one dict written by rank 0 through the storage layer, read with ``weights_only=True``.

``checkpoint.pt`` (for ``--resume``): model (without the DDP wrapper), optimizer, scheduler, scaler,
epoch, step, step within the epoch, config, label names, manifest and dataset digests.
``model.pt`` (for evaluation and prediction): the model, its name and input size, the label names,
the per-finding thresholds chosen on validation, and the digests.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from cxr import storage


def save(obj: dict[str, Any], url: str) -> None:
    """Serialize with torch.save and write atomically (local rename or a whole-object put)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(url, buf.getvalue(), durable=True)


def load(url: str) -> dict[str, Any]:
    """Read a checkpoint or model bundle (a path, an s3:// URL, or an MLflow ``models:/`` or ``runs:/``
    URI whose run logged one); only tensors and plain Python values are accepted."""
    if url.startswith(("models:/", "runs:/")):
        from cxr.registry import download_bundle

        data = download_bundle(url)
    else:
        data = storage.read_bytes(url)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def exists(url: str) -> bool:
    return storage.exists(url)
