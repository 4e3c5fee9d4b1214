"""Where a finding is: class activation maps (CAM), boxes from them, and T(IoBB) accuracy.

CAM (Zhou et al., CVPR 2016): for finding ``c`` the map is ``sum_k w[c, k] * F_k(x, y)`` over the last
feature maps ``F`` and the classifier weights ``w`` (the models here end in global average pooling
and one linear layer, so the map is exact, no gradients needed). It is upsampled to the input size
and scaled to [0, 1].

Localization accuracy as Wang et al. (ChestX-ray8, CVPR 2017) define it: the heatmap is thresholded,
the largest connected region's bounding box is the prediction, scaled to the 1024 px frame of the
NIH boxes, and it counts as correct when IoBB = area(prediction and truth) / area(prediction)
exceeds T, for T in 0.1, 0.25, 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from cxr.learn.models import Classifier

BOX_FRAME = 1024.0  # NIH boxes are in the coordinates of the 1024 px release PNGs
IOBB_THRESHOLDS = (0.1, 0.25, 0.5)
HEATMAP_THRESHOLD = 0.7  # of the map's range; Wang et al. threshold their maps at a fixed 180 of 255


@torch.no_grad()
def class_activation_maps(
    model: Classifier, images: torch.Tensor, classes: Sequence[int] | None = None
) -> torch.Tensor:
    """[N, C, H, W] maps in [0, 1] for ``classes`` (default all), at the input's resolution."""
    model.eval()
    return cams_from_features(model, model.features(images), classes, tuple(images.shape[-2:]))


def cams_from_features(
    model: Classifier, features: torch.Tensor, classes: Sequence[int] | None, size: tuple[int, int]
) -> torch.Tensor:
    """[N, C, H, W] maps in [0, 1] from ``model.features``' output [N, K, h, w], upsampled to ``size``."""
    weights = model.classifier.weight.float()  # [C, K]
    if classes is not None:
        weights = weights[list(classes)]
    maps = torch.einsum("ck,nkhw->nchw", weights, features.float())
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    low = maps.amin(dim=(2, 3), keepdim=True)
    high = maps.amax(dim=(2, 3), keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-12)


def heatmap_box(heatmap: np.ndarray, threshold: float = HEATMAP_THRESHOLD) -> tuple[float, float, float, float, float]:
    """(x, y, w, h) of the largest region above ``threshold``, in heatmap pixels, and the heatmap share: the
    share of the image where the map is at least ``threshold``, every region counted (not the box's share)."""
    mask = heatmap >= threshold
    share = float(mask.mean())
    labels, count = ndimage.label(mask)
    if count == 0:
        return 0.0, 0.0, float(heatmap.shape[1]), float(heatmap.shape[0]), share
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    rows, cols = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0), share


def iobb(predicted: Sequence[float], truth: Sequence[float]) -> float:
    """Intersection over the *predicted* box's area (Wang et al.), boxes as (x, y, w, h)."""
    px, py, pw, ph = predicted
    tx, ty, tw, th = truth
    ix = max(0.0, min(px + pw, tx + tw) - max(px, tx))
    iy = max(0.0, min(py + ph, ty + th) - max(py, ty))
    area = pw * ph
    return (ix * iy) / area if area > 0 else 0.0


@dataclass(frozen=True)
class LocalizedBox:
    """One true box and the box the model's map gives for its finding, both in the 1024 px frame."""

    image_id: str
    finding: str
    truth: tuple[float, float, float, float]
    predicted: tuple[float, float, float, float]
    iobb: float

    def hits(self, thresholds: Sequence[float] = IOBB_THRESHOLDS) -> dict[float, bool]:
        """For each T: whether this box counts as found (IoBB > T)."""
        return {t: self.iobb > t for t in thresholds}


def gallery_order(findings: Sequence[str], n: int) -> list[int]:
    """Up to ``n`` indices of ``findings`` (one per box), taking each finding's boxes in turn, so that a gallery
    shows as many findings as it can before it shows a second box of one."""
    queues: dict[str, list[int]] = {}
    for i, finding in enumerate(findings):
        queues.setdefault(finding, []).append(i)
    order: list[int] = []
    while len(order) < n and any(queues.values()):
        for finding in list(queues):
            if queues[finding] and len(order) < n:
                order.append(queues[finding].pop(0))
    return order


@dataclass(frozen=True)
class LocalizationScore:
    """One finding: how many true boxes, and for each T the share whose predicted box has IoBB > T."""

    n: int
    accuracy: Mapping[float, float]


def localization_accuracy(
    predicted: Mapping[str, Sequence[tuple[float, float, float, float]]],
    truth: Mapping[str, Sequence[tuple[float, float, float, float]]],
    thresholds: Sequence[float] = IOBB_THRESHOLDS,
) -> dict[str, LocalizationScore]:
    """Per finding: the share of its true boxes whose predicted box reaches IoBB > T, for each T.

    ``predicted[f][i]`` is the box predicted for the image of ``truth[f][i]``.
    """
    out: dict[str, LocalizationScore] = {}
    for finding, boxes in truth.items():
        scores = [iobb(p, t) for p, t in zip(predicted[finding], boxes, strict=True)]
        out[finding] = LocalizationScore(
            len(boxes), {t: float(np.mean([s > t for s in scores])) if scores else 0.0 for t in thresholds}
        )
    return out
