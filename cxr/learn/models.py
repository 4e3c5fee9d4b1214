"""Classifiers with 14 outputs: backbones by name, a small CNN for CPU demos, transfer learning.

DenseNet-121 is built in plain torch (:mod:`cxr.learn.densenet`, the module names of torchvision's, so
its state-dict files load), which keeps torchvision's import out of ``cxr predict``; ResNet-50 and
EfficientNet-B0 come from torchvision.

Gray input rule: the model takes one channel, uint8 values scaled to [0, 1]. An input stem repeats it
into three channels and normalizes them with the ImageNet mean and standard deviation, so ImageNet
weights see what they were trained on; the ``small`` model skips the repeat (it has one input channel)
and only centres the values.

Every model exposes ``features(x) -> [N, C, h, w]`` and ``classifier`` (a Linear on the globally
average-pooled features), which class activation maps need.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cxr.findings import FINDINGS
from cxr.learn.config import MODEL_NAMES
from cxr.learn.densenet import CHANNELS, densenet121_features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GrayStem(nn.Module):
    """[N, 1, H, W] in [0, 1] -> [N, 3, H, W] normalized like ImageNet."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std


class Classifier(nn.Module):
    """stem -> backbone features -> ReLU -> global average pool -> Linear(14)."""

    def __init__(self, name: str, stem: nn.Module, body: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.name = name
        self.stem = stem
        self.body = body
        self.classifier = nn.Linear(channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(self.stem(x)))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The logits from :meth:`features`' output: global average pool, then the linear layer."""
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)
        # the head in fp32 even under bf16 autocast: the probabilities, metrics and thresholds come from it
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.classifier(pooled.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _small_body(group_norm: bool = False) -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        # BatchNorm by default: measured on synthetic data, GroupNorm(8) and no normalization both
        # stalled at the prevalence for many epochs where BatchNorm reached 0.97 validation AUROC in
        # five. GroupNorm ("small-gn") is batch-independent: N processes then compute exactly what one
        # process computes on the union of their batches (CPU has no SyncBatchNorm).
        norm = nn.GroupNorm(8, cout) if group_norm else nn.BatchNorm2d(cout)
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm, nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(1, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.MaxPool2d(2),
        *block(128, 128),
        *block(128, 128),
    )


class CenterStem(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25


def _torchvision() -> Any:
    """torchvision's model builders, imported when a model needs them: the import costs about a second (its
    ``ops`` load ``torch._dynamo``), which ``cxr predict`` with the small CNN or DenseNet-121 need not pay."""
    from torchvision import models

    return models


class DenseNet121(nn.Module):
    """torchvision's densenet121 without its classifier: the ``features`` name makes its state-dict files
    (keys ``features.*``) load with :func:`load_backbone_weights`."""

    def __init__(self) -> None:
        super().__init__()
        self.features = densenet121_features()


def _densenet121() -> tuple[nn.Module, int, Callable[[nn.Module], nn.Module]]:
    return DenseNet121(), CHANNELS, lambda m: m.features


def _resnet50() -> tuple[nn.Module, int, Callable[[nn.Module], nn.Module]]:
    def body(m: nn.Module) -> nn.Module:
        return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)

    return _torchvision().resnet50(weights=None), 2048, body


def _efficientnet_b0() -> tuple[nn.Module, int, Callable[[nn.Module], nn.Module]]:
    return _torchvision().efficientnet_b0(weights=None), 1280, lambda m: m.features


_BACKBONES = {"densenet121": _densenet121, "resnet50": _resnet50, "efficientnet_b0": _efficientnet_b0}


def build_model(name: str = "densenet121", num_classes: int = len(FINDINGS), weights: str | None = None) -> Classifier:
    """A classifier by name; ``weights``: a torchvision state-dict file of that model (head replaced).

    The file is loaded with ``torch.load(weights_only=True)``; its classifier (1000 ImageNet classes)
    is dropped, every other tensor must match the architecture.
    """
    if name in ("small", "small-gn"):
        if weights:
            raise ValueError(f"the {name} model has no pretrained weights; drop --weights")
        return Classifier(name, CenterStem(), _small_body(group_norm=name == "small-gn"), 128, num_classes)
    if name not in _BACKBONES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    backbone, channels, body = _BACKBONES[name]()
    if weights:
        load_backbone_weights(backbone, weights)
    return Classifier(name, GrayStem(), body(backbone), channels, num_classes)


# DenseNet files from before torchvision 0.3 name a layer's parts "norm.1", "relu.1", "conv.1"; the
# modules are "norm1", "relu1", "conv1" now. torchvision renames them when it loads its own files.
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)


def modern_key(key: str) -> str:
    """A state-dict key in today's torchvision names (legacy DenseNet keys renamed, others as they are)."""
    match = _LEGACY_DENSENET_KEY.match(key)
    return f"{match.group(1)}{match.group(2)}.{match.group(3)}" if match else key


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load a torchvision state dict into ``backbone`` (torchvision's model, or :class:`DenseNet121` with its
    names), skipping its classification head."""
    import io

    from cxr import storage

    state = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {modern_key(k): v for k, v in state.items() if not k.startswith(("classifier.", "fc."))}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("classifier.", "fc."))]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {type(backbone).__name__}: missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )


def set_backbone_trainable(model: Classifier, trainable: bool) -> None:
    """Freeze or unfreeze everything but the classifier (for the first epochs of transfer learning)."""
    for p in model.body.parameters():
        p.requires_grad_(trainable)
