"""``cxr evaluate``: a trained model on a dataset split: per-finding metrics, curves, and localization.

Thresholds are chosen on the dataset's validation split (Youden's J, or a fixed specificity) and
applied to the evaluated split. Localization uses the boxes of the evaluated split: for each box the
model's class activation map of that finding gives a box, scored by T(IoBB); the same procedure on
random heatmaps is reported beside it as the floor to beat.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from scipy import ndimage

from cxr import checkpoint, storage
from cxr.augment import resize
from cxr.charts import heatmap_overlay, roc_pr_chart
from cxr.dataset import DatasetVersion, open_version
from cxr.distributed import DistInfo
from cxr.findings import FINDINGS
from cxr.localize import class_activation_maps, heatmap_box, localization_accuracy
from cxr.metrics import evaluate_predictions, specificity_threshold, youden_threshold
from cxr.models import Classifier, build_model
from cxr.shards import ShardStore, gather, split_rows
from cxr.train import predict_rows, to_device

BOX_FRAME = 1024.0  # NIH boxes are in the coordinates of the 1024 px release PNGs


def load_model(uri: str, device: str = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """A ``model.pt`` bundle (local or s3://) as an eval-mode model and its metadata."""
    bundle = checkpoint.load(uri)
    for key in ("model", "model_name", "image_size", "label_names"):
        if key not in bundle:
            raise ValueError(f"{uri} is not a model bundle: no {key!r}")
    if list(bundle["label_names"]) != list(FINDINGS):
        raise ValueError(f"{uri} predicts {bundle['label_names']}, not the 14 findings")
    model = build_model(bundle["model_name"])
    model.load_state_dict(bundle["model"])
    return model.to(device).eval(), bundle


def _store(version: DatasetVersion, image_size: int) -> ShardStore:
    sizes = sorted(version.sizes)
    size = next((s for s in sizes if s >= image_size), sizes[-1])
    return ShardStore(version.path, version.digest, size)


def choose_thresholds(labels: np.ndarray, probs: np.ndarray, rule: str, specificity: float) -> list[float]:
    if rule == "youden":
        return [youden_threshold(labels[:, i], probs[:, i]) for i in range(len(FINDINGS))]
    if rule == "specificity":
        return [specificity_threshold(labels[:, i], probs[:, i], specificity) for i in range(len(FINDINGS))]
    raise ValueError(f"threshold rule must be 'youden' or 'specificity', got {rule!r}")


def evaluate_model(
    model_uri: str,
    dataset: str,
    split: str = "test",
    threshold_rule: str = "youden",
    specificity: float = 0.9,
    n_boot: int = 200,
    seed: int = 0,
    out_dir: str | None = None,
    overlays: int = 8,
) -> dict[str, Any]:
    """Metrics, curves and localization of ``model_uri`` on ``split`` of a dataset version."""
    info = DistInfo(0, 1, 0, torch.device("cpu"), False)
    model, bundle = load_model(model_uri)
    version = open_version(dataset)
    metadata = version.metadata()
    if split not in set(metadata["split"].to_pylist()):
        raise ValueError(f"dataset {version.digest} has no {split!r} rows")
    store = _store(version, bundle["image_size"])
    rows = split_rows(metadata, split, expand_repeats=False)
    probs, labels = predict_rows(model, store, rows, bundle["image_size"], info)
    val = split_rows(metadata, "val", expand_repeats=False)
    if len(val):
        val_probs, val_labels = predict_rows(model, store, val, bundle["image_size"], info)
        thresholds = choose_thresholds(val_labels, val_probs, threshold_rule, specificity)
    else:
        thresholds = list(bundle.get("thresholds", [0.5] * len(FINDINGS)))
    result = evaluate_predictions(labels, probs, thresholds, n_boot=n_boot, seed=seed)
    result.update({"model": model_uri, "dataset": version.digest, "split": split, "n": len(rows),
                   "threshold_rule": threshold_rule if len(val) else "from the model bundle",
                   "specificity_target": specificity if threshold_rule == "specificity" else None})  # fmt: skip
    loc, loc_random, examples = _localize(model, version, store, rows, bundle["image_size"], seed)
    result["localization"] = loc
    result["localization_random"] = loc_random
    if out_dir:
        storage.write_text(storage.join(out_dir, "evaluation.json"), json.dumps(result, indent=2) + "\n")
        storage.write_bytes(storage.join(out_dir, "curves.png"), roc_pr_chart(labels, probs, f"{split}, n = {len(rows)}"))
        for name, png in examples[:overlays]:
            storage.write_bytes(storage.join(out_dir, "heatmaps", name), png)
    return result


def _random_heatmap(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=shape[0] / 16)
    return (noise - noise.min()) / max(noise.max() - noise.min(), 1e-12)


def _localize(
    model: Classifier, version: DatasetVersion, store: ShardStore, rows: Any, image_size: int, seed: int
) -> tuple[dict, dict, list[tuple[str, bytes]]]:
    boxes = version.boxes()
    position = {image_id: i for i, image_id in enumerate(rows.image_ids)}
    boxes = boxes.filter(pc.is_in(boxes["image_id"], pa.array(list(position))))
    if boxes.num_rows == 0:
        return {}, {}, []
    scale = BOX_FRAME / image_size
    rng = np.random.default_rng(seed)
    truth: dict[str, list] = {}
    predicted: dict[str, list] = {}
    random_pred: dict[str, list] = {}
    examples: list[tuple[str, bytes]] = []
    for box in boxes.to_pylist():
        i = position[box["image_id"]]
        c = FINDINGS.index(box["finding"])
        image = resize(to_device(gather(store, rows, np.array([i])), DistInfo(0, 1, 0, torch.device("cpu"), False)), image_size)
        heatmap = class_activation_maps(model, image, [c])[0, 0].numpy()
        x, y, w, h, _ = heatmap_box(heatmap)
        rx, ry, rw, rh, _ = heatmap_box(_random_heatmap(heatmap.shape, rng))
        true_box = (box["x"], box["y"], box["w"], box["h"])
        truth.setdefault(box["finding"], []).append(true_box)
        predicted.setdefault(box["finding"], []).append((x * scale, y * scale, w * scale, h * scale))
        random_pred.setdefault(box["finding"], []).append((rx * scale, ry * scale, rw * scale, rh * scale))
        if len(examples) < 16:
            pixels = (image[0, 0].numpy() * 255).astype(np.uint8)
            shown = [(f"{box['finding']} (truth)", tuple(v / scale for v in true_box), "lime"), ("CAM box", (x, y, w, h), "red")]
            examples.append((f"{box['image_id'][:-4]}_{box['finding']}.png", heatmap_overlay(pixels, heatmap, shown, f"{box['image_id']}: {box['finding']}")))
    return localization_accuracy(predicted, truth), localization_accuracy(random_pred, truth), examples
