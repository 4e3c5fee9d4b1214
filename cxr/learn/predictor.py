"""A model loaded once, scoring decoded images in batches: the 14 probabilities, and for each finding above its
threshold where it is (a box in the image's own pixels and in the 1024 px frame of NIH's boxes) and how much
of the image its heatmap marks. ``cxr predict`` and ``cxr serve`` both score through :class:`Predictor`.

One pass of the backbone per batch gives both the probabilities (global average pool and the linear head,
exactly what :meth:`Classifier.forward` computes, so evaluation gives the same numbers) and the class
activation maps of the findings above threshold (:mod:`cxr.learn.localize`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cxr.findings import FINDINGS
from cxr.learn.checkpoint import ModelBundle
from cxr.learn.models import Classifier

EXTENT_OF = "image"  # what a heatmap share is a share of (no lung segmentation: the whole image)


@dataclass(frozen=True)
class Finding:
    """A finding above its threshold: where, and how much of the image its heatmap marks."""

    finding: str
    probability: float
    threshold: float
    box_1024: tuple[float, float, float, float]  # x, y, w, h in the 1024 px frame of NIH's box list
    box_px: tuple[float, float, float, float]  # the same box in this image's own pixels
    heatmap_share: float  # share of the image where the heatmap >= HEATMAP_THRESHOLD (all regions; not the box's)
    extent_of: str = EXTENT_OF  # what heatmap_share is a share of


@dataclass(frozen=True)
class Prediction:
    image: str
    size: tuple[int, int]  # width, height of the file
    probabilities: Mapping[str, float]
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class Scored:
    """A prediction, with what drawing its overlays needs: the gray image and each positive finding's heatmap
    (at the model's input size, values in [0, 1])."""

    prediction: Prediction
    gray: np.ndarray
    heatmaps: Mapping[str, np.ndarray]

    def overlay_png(self, finding: str) -> bytes:
        """The image at its own resolution with ``finding``'s heatmap and box drawn over it (PNG bytes)."""
        from cxr.charts import MODEL_BOX, heatmap_overlay

        found = next(f for f in self.prediction.findings if f.finding == finding)
        title = f"{self.prediction.image}: {finding} {found.probability:.2f}"
        return heatmap_overlay(self.gray, self.heatmaps[finding], [(finding, found.box_px, MODEL_BOX)], title)


class Predictor:
    """A model bundle's eval-mode model on a device, with its input size, shard size and thresholds."""

    def __init__(self, model: Classifier, bundle: ModelBundle, device: torch.device) -> None:
        self.model = model
        self.bundle = bundle
        self.device = device
        self.size = int(bundle.image_size)
        self.thresholds = [float(t) for t in bundle.thresholds] or [0.5] * len(FINDINGS)

    @classmethod
    def load(cls, model_uri: str, device: str = "cpu") -> Predictor:
        """The model ``model_uri`` names (a ``model.pt``, local or ``s3://``, or an MLflow model URI)."""
        from cxr.learn.inference import load_model, single_process

        info = single_process(device)
        model, bundle = load_model(model_uri, info.device)
        return cls(model, bundle, info.device)

    def model_input(self, gray: np.ndarray) -> torch.Tensor:
        """An image as the model saw its training images: resized like ingest to the shard size, then by the same
        tensor resize as training and evaluation to the input size. [1, 1, S, S] floats in [0, 1]."""
        from cxr.data.decode import resize_square
        from cxr.learn.augment import resize
        from cxr.learn.inference import to_float

        shard = resize_square(gray, int(self.bundle.shard_size or self.bundle.image_size))
        return resize(to_float(torch.from_numpy(shard.copy())[None, None].to(self.device)), self.size)

    @torch.no_grad()
    def score(self, grays: Sequence[np.ndarray], names: Sequence[str]) -> list[Scored]:
        """Each 8-bit gray image (any size) scored, in one batch."""
        from cxr.learn.localize import BOX_FRAME, cams_from_features, heatmap_box

        if not grays:
            return []
        x = torch.cat([self.model_input(g) for g in grays])
        features = self.model.features(x)
        probs = torch.sigmoid(self.model.head(features)).cpu().numpy()
        scored = []
        for n, (gray, name) in enumerate(zip(grays, names, strict=True)):
            height, width = gray.shape
            positive = [i for i in range(len(FINDINGS)) if probs[n, i] >= self.thresholds[i]]
            maps_np = np.zeros((0, self.size, self.size), np.float32)
            if positive:
                maps_np = cams_from_features(self.model, features[n : n + 1], positive, (self.size, self.size))[0]
                maps_np = maps_np.cpu().numpy()
            findings, heatmaps = [], {}
            for k, i in enumerate(positive):
                bx, by, bw, bh, share = heatmap_box(maps_np[k])
                scale_x, scale_y = width / self.size, height / self.size
                box_px = (bx * scale_x, by * scale_y, bw * scale_x, bh * scale_y)
                findings.append(
                    Finding(
                        FINDINGS[i],
                        float(probs[n, i]),
                        self.thresholds[i],
                        tuple(round(v * BOX_FRAME / self.size, 1) for v in (bx, by, bw, bh)),  # type: ignore[arg-type]
                        tuple(round(v, 1) for v in box_px),  # type: ignore[arg-type]
                        round(share, 4),
                    )
                )
                heatmaps[FINDINGS[i]] = maps_np[k]
            probabilities = {f: float(p) for f, p in zip(FINDINGS, probs[n], strict=True)}
            scored.append(Scored(Prediction(name, (width, height), probabilities, tuple(findings)), gray, heatmaps))
        return scored
