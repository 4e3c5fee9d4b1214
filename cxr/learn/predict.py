"""``cxr predict``: the 14 probabilities for image files, and for each finding above its threshold,
where (a box in the 1024 px frame of NIH's boxes) and how large (the share of the image the
thresholded heatmap covers), with heatmap overlays.

Images go through the same decoding and 8-bit gray rule as ingest (:mod:`cxr.decode`), so a file
ingest would quarantine is refused here with the same reason.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from cxr import storage
from cxr.charts import heatmap_overlay
from cxr.data.decode import decode_image, resize_square
from cxr.findings import FINDINGS
from cxr.learn.evaluate import BOX_FRAME
from cxr.learn.inference import load_model
from cxr.learn.localize import class_activation_maps, heatmap_box


@dataclass(frozen=True)
class Finding:
    """A finding above its threshold: where (a box in the 1024 px frame) and how large (share of the image)."""

    finding: str
    probability: float
    threshold: float
    box_1024: tuple[float, float, float, float]
    extent: float


@dataclass(frozen=True)
class Prediction:
    image: str
    size: tuple[int, int]  # width, height of the file
    probabilities: Mapping[str, float]
    findings: tuple[Finding, ...]


def predict_images(paths: list[str], model_uri: str, heatmaps_dir: str | None = None) -> list[Prediction]:
    """One result per image: probabilities, and findings above threshold with box and extent."""
    model, bundle = load_model(model_uri)
    size = int(bundle.image_size)
    thresholds = list(bundle.thresholds) or [0.5] * len(FINDINGS)
    results = []
    for path in paths:
        gray = np.asarray(decode_image(storage.read_bytes(path)))
        height, width = gray.shape
        pixels = resize_square(gray, size)
        x = torch.from_numpy(pixels.copy()).float().div_(255.0)[None, None]
        with torch.no_grad():
            probs = torch.sigmoid(model(x))[0].numpy()
        positive = [i for i in range(len(FINDINGS)) if probs[i] >= thresholds[i]]
        maps = class_activation_maps(model, x, positive)[0].numpy() if positive else np.zeros((0, size, size))
        findings = []
        scale = BOX_FRAME / size
        for k, i in enumerate(positive):
            bx, by, bw, bh, share = heatmap_box(maps[k])
            box = (round(bx * scale, 1), round(by * scale, 1), round(bw * scale, 1), round(bh * scale, 1))
            findings.append(Finding(FINDINGS[i], float(probs[i]), float(thresholds[i]), box, round(share, 4)))
            if heatmaps_dir:
                name = f"{posixpath.splitext(posixpath.basename(path))[0]}_{FINDINGS[i]}.png"
                title = f"{posixpath.basename(path)}: {FINDINGS[i]} {probs[i]:.2f}"
                png = heatmap_overlay(pixels, maps[k], [(FINDINGS[i], (bx, by, bw, bh), "red")], title)
                storage.write_bytes(storage.join(heatmaps_dir, name), png)
        probabilities = {f: float(p) for f, p in zip(FINDINGS, probs, strict=True)}
        results.append(Prediction(path, (width, height), probabilities, tuple(findings)))
    return results
