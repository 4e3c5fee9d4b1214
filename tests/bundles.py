"""Model bundles the tests write themselves: untrained weights (what is tested does not depend on them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cxr.findings import FINDINGS
from cxr.learn.checkpoint import ModelBundle
from cxr.learn.models import build_model


def untrained_bundle(
    path: Path, model: str = "small", image_size: int = 32, threshold: float = 0.0, shard_size: int = 64, **fields: Any
) -> Path:
    """A ``model.pt`` of a fresh ``model`` (seed 0) at ``image_size`` px made from ``shard_size`` px shards, every
    threshold ``threshold`` (0: every finding "above threshold", all 14 localized); ``fields``: other bundle fields."""
    torch.manual_seed(0)
    ModelBundle(
        model=build_model(model).state_dict(),
        model_name=model,
        image_size=image_size,
        label_names=list(FINDINGS),
        thresholds=[threshold] * len(FINDINGS),
        shard_size=shard_size,
        **fields,
    ).save(str(path))
    return path
