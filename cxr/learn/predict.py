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
from cxr.learn.augment import resize
from cxr.learn.checkpoint import ModelBundle
from cxr.learn.evaluate import BOX_FRAME
from cxr.learn.inference import load_model, single_process, to_float
from cxr.learn.localize import class_activation_maps, heatmap_box


@dataclass(frozen=True)
class Finding:
    """A finding above its threshold: where and how large."""

    finding: str
    probability: float
    threshold: float
    box_1024: tuple[float, float, float, float]  # x, y, w, h in the 1024 px frame of NIH's box list
    box_px: tuple[float, float, float, float]  # the same box in this image's own pixels
    extent: float  # share of the image the thresholded heatmap covers (not the box's share)


@dataclass(frozen=True)
class Prediction:
    image: str
    size: tuple[int, int]  # width, height of the file
    probabilities: Mapping[str, float]
    findings: tuple[Finding, ...]


def model_input(gray: np.ndarray, bundle: ModelBundle, device: torch.device) -> torch.Tensor:
    """An image as the model saw its training images: resized like ingest to the shard size, then by the same
    tensor resize as training and evaluation to the input size. [1, 1, S, S] floats in [0, 1]."""
    shard = resize_square(gray, int(bundle.shard_size or bundle.image_size))
    return resize(to_float(torch.from_numpy(shard.copy())[None, None].to(device)), int(bundle.image_size))


def predict_images(
    paths: list[str], model_uri: str, heatmaps_dir: str | None = None, device: str = "cpu"
) -> list[Prediction]:
    """One result per image: probabilities, and findings above threshold with box and extent."""
    info = single_process(device)
    model, bundle = load_model(model_uri, info.device)
    size = int(bundle.image_size)
    thresholds = list(bundle.thresholds) or [0.5] * len(FINDINGS)
    results = []
    for path in paths:
        gray = np.asarray(decode_image(storage.read_bytes(path)))
        height, width = gray.shape
        x = model_input(gray, bundle, info.device)
        with torch.no_grad():
            probs = torch.sigmoid(model(x))[0].cpu().numpy()
        positive = [i for i in range(len(FINDINGS)) if probs[i] >= thresholds[i]]
        maps = class_activation_maps(model, x, positive)[0].cpu().numpy() if positive else np.zeros((0, size, size))
        pixels = (x[0, 0].cpu().numpy() * 255).round().astype(np.uint8)
        findings = []
        for k, i in enumerate(positive):
            bx, by, bw, bh, share = heatmap_box(maps[k])
            box_1024 = tuple(round(v * BOX_FRAME / size, 1) for v in (bx, by, bw, bh))
            box_px = (
                round(bx * width / size, 1),
                round(by * height / size, 1),
                round(bw * width / size, 1),
                round(bh * height / size, 1),
            )
            findings.append(
                Finding(FINDINGS[i], float(probs[i]), float(thresholds[i]), box_1024, box_px, round(share, 4))
            )
            if heatmaps_dir:
                name = f"{posixpath.splitext(posixpath.basename(path))[0]}_{FINDINGS[i]}.png"
                title = f"{posixpath.basename(path)}: {FINDINGS[i]} {probs[i]:.2f}"
                png = heatmap_overlay(pixels, maps[k], [(FINDINGS[i], (bx, by, bw, bh), "red")], title)
                storage.write_bytes(storage.join(heatmaps_dir, name), png)
        probabilities = {f: float(p) for f, p in zip(FINDINGS, probs, strict=True)}
        results.append(Prediction(path, (width, height), probabilities, tuple(findings)))
    return results
