"""``cxr predict``: the 14 probabilities for image files, and for each finding above its threshold,
where (a box in the 1024 px frame of NIH's boxes) and how much of the image its heatmap marks (the share
of the image's pixels where the finding's class activation map is at least ``HEATMAP_THRESHOLD`` of its
range, every region counted, not only the boxed one), with heatmap overlays at the image's own resolution.

Images go through the same decoding and 8-bit gray rule as ingest (:mod:`cxr.decode`), so a file
ingest would quarantine is refused here with the same reason. Every input is checked before torch and
the model are loaded (seconds): a bad file is named at once, all bad files in one line.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cxr import storage
from cxr.data.decode import ImageRejected
from cxr.data.quarantine import Reason
from cxr.data.source_image import ANY_FORMAT, decode_source_image
from cxr.findings import FINDINGS
from cxr.learn.reference import check_device, model_reference
from cxr.storage import StorageError

if TYPE_CHECKING:  # torch and the model code load after the inputs are checked (predict_images)
    import torch

    from cxr.learn.checkpoint import ModelBundle


@dataclass(frozen=True)
class Finding:
    """A finding above its threshold: where, and how much of the image its heatmap marks."""

    finding: str
    probability: float
    threshold: float
    box_1024: tuple[float, float, float, float]  # x, y, w, h in the 1024 px frame of NIH's box list
    box_px: tuple[float, float, float, float]  # the same box in this image's own pixels
    heatmap_share: float  # share of the image where the heatmap >= HEATMAP_THRESHOLD (all regions; not the box's)


@dataclass(frozen=True)
class Prediction:
    image: str
    size: tuple[int, int]  # width, height of the file
    probabilities: Mapping[str, float]
    findings: tuple[Finding, ...]


def _problem(path: str) -> str | None:
    """Why ``path`` cannot be predicted on (not found, a folder, unreadable, not an image ingest accepts), or None."""
    try:
        if not storage.is_file(path):
            return "a folder, not an image file" if storage.exists(path) else "not found"
        decode_source_image(storage.read_bytes(path), ANY_FORMAT)
    except ImageRejected as err:
        return err.detail if err.reason == Reason.UNREADABLE_IMAGE else f"{err.reason}: {err.detail}"
    except PermissionError:
        return "permission denied"
    except (OSError, StorageError) as err:
        return f"cannot be read: {err}"
    return None


def check_images(paths: list[str]) -> None:
    """Raise ValueError naming every path that is not a readable image ingest would accept (one line)."""
    if not paths:
        raise ValueError("no images given: name one or more PNG, JPEG or DICOM files (local paths or s3:// URLs)")
    bad = [f"{path} ({why})" for path in paths if (why := _problem(path))]
    if bad:
        raise ValueError(
            f"{len(bad)} of {len(paths)} inputs cannot be used: {'; '.join(bad)}. "
            "Give PNG, JPEG or DICOM images (local paths or s3:// URLs), as ingest reads them"
        )


def model_input(gray: np.ndarray, bundle: ModelBundle, device: torch.device) -> torch.Tensor:
    """An image as the model saw its training images: resized like ingest to the shard size, then by the same
    tensor resize as training and evaluation to the input size. [1, 1, S, S] floats in [0, 1]."""
    import torch

    from cxr.data.decode import resize_square
    from cxr.learn.augment import resize
    from cxr.learn.inference import to_float

    shard = resize_square(gray, int(bundle.shard_size or bundle.image_size))
    return resize(to_float(torch.from_numpy(shard.copy())[None, None].to(device)), int(bundle.image_size))


def _draw(gray: np.ndarray, heatmap: np.ndarray, box: tuple, title: str, target: str) -> None:
    from cxr.charts import heatmap_overlay

    storage.write_bytes(target, heatmap_overlay(gray, heatmap, [box], title))


def predict_images(
    paths: list[str], model_uri: str, heatmaps_dir: str | None = None, device: str = "cpu"
) -> list[Prediction]:
    """One result per image: probabilities, and findings above threshold with their box and heatmap share.

    Every image is checked first (:func:`check_images`), then the device and the overlay folder, and only
    then are torch and the model loaded."""
    check_images(paths)
    if heatmaps_dir and storage.is_file(heatmaps_dir):
        raise ValueError(f"--heatmaps {heatmaps_dir} is a file: give a folder for the overlays (made if missing)")
    check_device(device)
    model_uri = model_reference(model_uri)
    import torch

    from cxr.learn.inference import load_model, single_process
    from cxr.learn.localize import BOX_FRAME, class_activation_maps, heatmap_box

    info = single_process(device)
    model, bundle = load_model(model_uri, info.device)
    size = int(bundle.image_size)
    thresholds = list(bundle.thresholds) or [0.5] * len(FINDINGS)
    results = []
    # Overlays are drawn and written by threads while the next findings and images are scored: encoding a
    # full-resolution PNG (about 0.07 s at 1024 px) releases the GIL.
    drawing = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    drawn: list[Future[None]] = []

    def predict_one(path: str) -> Prediction:
        gray = np.asarray(decode_source_image(storage.read_bytes(path), ANY_FORMAT))
        height, width = gray.shape
        x = model_input(gray, bundle, info.device)
        with torch.no_grad():
            probs = torch.sigmoid(model(x))[0].cpu().numpy()
        positive = [i for i in range(len(FINDINGS)) if probs[i] >= thresholds[i]]
        maps = class_activation_maps(model, x, positive)[0].cpu().numpy() if positive else np.zeros((0, size, size))
        findings = []
        for k, i in enumerate(positive):
            bx, by, bw, bh, share = heatmap_box(maps[k])
            box_1024 = tuple(round(v * BOX_FRAME / size, 1) for v in (bx, by, bw, bh))
            box_px = (bx * width / size, by * height / size, bw * width / size, bh * height / size)
            findings.append(
                Finding(
                    FINDINGS[i],
                    float(probs[i]),
                    float(thresholds[i]),
                    box_1024,
                    tuple(round(v, 1) for v in box_px),
                    round(share, 4),
                )
            )
            if heatmaps_dir:  # at the file's own resolution: the heatmap upsampled to it, the box in its pixels
                name = f"{posixpath.splitext(posixpath.basename(path))[0]}_{FINDINGS[i]}.png"
                title = f"{posixpath.basename(path)}: {FINDINGS[i]} {probs[i]:.2f}"
                target = storage.join(heatmaps_dir, name)
                drawn.append(drawing.submit(_draw, gray, maps[k], (FINDINGS[i], box_px, "red"), title, target))
        probabilities = {f: float(p) for f, p in zip(FINDINGS, probs, strict=True)}
        return Prediction(path, (width, height), probabilities, tuple(findings))

    try:
        for path in paths:
            results.append(predict_one(path))
    except BaseException:  # an error or an interruption: the overlays not begun are not drawn
        drawing.shutdown(wait=True, cancel_futures=True)
        raise
    drawing.shutdown(wait=True)
    for future in drawn:
        future.result()  # an overlay that could not be written fails the command, never leaves a silent gap
    return results
