"""``cxr predict``: the 14 probabilities for image files, and for each finding above its threshold,
where (a box in the 1024 px frame of NIH's boxes) and how large (the share of the image the
thresholded heatmap covers), with heatmap overlays.

Images go through the same decoding and 8-bit gray rule as ingest (:mod:`cxr.decode`), so a file
ingest would quarantine is refused here with the same reason.
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import torch

from cxr import storage
from cxr.charts import heatmap_overlay
from cxr.decode import decode_image, resize_square
from cxr.evaluate import BOX_FRAME, load_model
from cxr.findings import FINDINGS
from cxr.localize import class_activation_maps, heatmap_box


def predict_images(paths: list[str], model_uri: str, heatmaps_dir: str | None = None) -> list[dict[str, Any]]:
    """One result per image: probabilities, and findings above threshold with box and extent."""
    model, bundle = load_model(model_uri)
    size = int(bundle["image_size"])
    thresholds = list(bundle.get("thresholds") or [0.5] * len(FINDINGS))
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
        for k, i in enumerate(positive):
            bx, by, bw, bh, share = heatmap_box(maps[k])
            scale = BOX_FRAME / size
            findings.append({
                "finding": FINDINGS[i],
                "probability": float(probs[i]),
                "threshold": float(thresholds[i]),
                "box_1024": [round(v * scale, 1) for v in (bx, by, bw, bh)],
                "extent": round(share, 4),
            })  # fmt: skip
            if heatmaps_dir:
                name = f"{posixpath.splitext(posixpath.basename(path))[0]}_{FINDINGS[i]}.png"
                png = heatmap_overlay(pixels, maps[k], [(FINDINGS[i], (bx, by, bw, bh), "red")], f"{posixpath.basename(path)}: {FINDINGS[i]} {probs[i]:.2f}")
                storage.write_bytes(storage.join(heatmaps_dir, name), png)
        results.append({
            "image": path,
            "size": [width, height],
            "probabilities": {f: float(p) for f, p in zip(FINDINGS, probs, strict=True)},
            "findings": findings,
        })  # fmt: skip
    return results
