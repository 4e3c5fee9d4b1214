"""``cxr evaluate``: a trained model on a dataset split: per-finding metrics, curves, and localization.

Thresholds are chosen on the dataset's validation split (Youden's J, or a fixed specificity) and
applied to the evaluated split. Localization uses the boxes of the evaluated split: for each box the
model's class activation map of that finding gives a box, scored by T(IoBB); the same procedure on
random heatmaps is reported beside it as the floor to beat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import ndimage

from cxr import storage
from cxr.charts import MODEL_BOX, TRUTH_BOX, heatmap_overlay, roc_pr_chart
from cxr.data.version import DatasetVersion, open_version
from cxr.findings import FINDINGS
from cxr.learn.augment import resize
from cxr.learn.checkpoint import ModelBundle
from cxr.learn.distributed import DistInfo
from cxr.learn.inference import load_model, predict_rows, shard_store, single_process, to_device
from cxr.learn.localize import (
    BOX_FRAME,
    LocalizationScore,
    LocalizedBox,
    class_activation_maps,
    gallery_order,
    heatmap_box,
    iobb,
    localization_accuracy,
)
from cxr.learn.metrics import FindingMetrics, evaluate_predictions, specificity_threshold, youden_threshold
from cxr.learn.models import Classifier
from cxr.learn.reference import model_reference
from cxr.learn.shards import AnyShardStore, Rows, gather, split_rows
from cxr.records import from_json, to_json

THRESHOLD_RULES = ("youden", "specificity")


@dataclass(frozen=True)
class Evaluation:
    """``evaluation.json``: a model on one split of a dataset version."""

    model: str
    dataset: str  # the version's digest
    split: str
    n: int
    threshold_rule: str
    specificity_target: float | None
    mean_auroc: float | None
    findings: Mapping[str, FindingMetrics]
    localization: Mapping[str, LocalizationScore]  # CAM boxes against the split's NIH-style boxes
    localization_random: Mapping[str, LocalizationScore]  # the same procedure on random heatmaps: the floor
    model_dataset: str | None = None  # the version the model was trained on (its bundle's; None: not recorded)
    # the findings scored: those the model learned and the split labels (another source's: the shared ones)
    scored_findings: tuple[str, ...] = ()

    def dataset_warning(self) -> str | None:
        """A line for people when the scored version is not the one the model trained on; None when it is."""
        return other_version_warning(self.dataset, self.model_dataset, self.split)

    def to_json(self) -> str:
        return to_json(self) + "\n"

    @classmethod
    def read(cls, url: str) -> Evaluation:
        return from_json(cls, storage.read_text(url))


def other_version_warning(scored: str, trained_on: str | None, split: str) -> str | None:
    """A line for people when the scored version is not the one the model trained on; None when it is (or the
    model does not say). ``trained_on``: a digest, or a mixed manifest's digests joined by ``+``."""
    if trained_on is None or scored in trained_on.split("+"):
        return None
    return (
        f"dataset {scored} is not the version the model was trained on ({trained_on}): "
        f"its {split} split may hold images the model trained on; score dataset {trained_on} for a held-out result"
    )


def choose_thresholds(labels: np.ndarray, probs: np.ndarray, rule: str, specificity: float) -> list[float]:
    if rule == "youden":
        return [youden_threshold(labels[:, i], probs[:, i]) for i in range(len(FINDINGS))]
    if rule == "specificity":
        return [specificity_threshold(labels[:, i], probs[:, i], specificity) for i in range(len(FINDINGS))]
    raise ValueError(f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}, got {rule!r}")


@dataclass(frozen=True)
class Predictions:
    """A model's probabilities for rows of a split, with their labels (e.g. training's last validation)."""

    rows: Rows
    probs: np.ndarray
    labels: np.ndarray


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
    device: str = "cpu",
) -> Evaluation:
    """Metrics, curves and localization of ``model_uri`` on ``split`` of a dataset version.

    The settings, the device, the dataset and its split are checked before the model is loaded."""
    if threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}, got {threshold_rule!r}")
    if not 0 < specificity <= 1:
        raise ValueError(f"specificity must be in (0, 1] (e.g. 0.9), got {specificity}")
    check_resamples(n_boot)
    model_uri = model_reference(model_uri)
    info = single_process(device)
    version, metadata = version_with_split(dataset, split)
    model, bundle = load_model(model_uri, info.device)
    store = shard_store(version, bundle)
    rows = split_rows(metadata, split, expand_repeats=False)
    probs, labels = predict_rows(model, store, rows, bundle.image_size, info)
    labels = only_learned(labels, bundle)
    val = split_rows(metadata, "val", expand_repeats=False)
    if len(val):
        val_probs, val_labels = predict_rows(model, store, val, bundle.image_size, info)
        val_labels = only_learned(val_labels, bundle)
        thresholds = choose_thresholds(val_labels, val_probs, threshold_rule, specificity)
    else:
        thresholds, threshold_rule = list(bundle.thresholds) or [0.5] * len(FINDINGS), "from the model bundle"
    target = specificity if threshold_rule == "specificity" else None
    return report(
        model_uri,
        model,
        bundle,
        version,
        split,
        Predictions(rows, probs, labels),
        thresholds,
        threshold_rule,
        target,
        n_boot,
        seed,
        out_dir,
        overlays,
        info,
    )


def check_resamples(n_boot: int) -> None:
    if n_boot < 0:
        raise ValueError(f"bootstrap resamples must be >= 0 (0: no interval), got {n_boot}")


def version_with_split(dataset: str, split: str) -> tuple[DatasetVersion, pa.Table]:
    """A dataset version and its metadata; a split it does not hold is refused, naming those it does."""
    version = open_version(dataset)
    metadata = version.metadata()
    splits = sorted(set(metadata["split"].to_pylist()))
    if split not in splits:
        raise ValueError(f"dataset {version.digest} has no {split!r} rows: choose one of {', '.join(splits)}")
    return version, metadata


def only_learned(labels: np.ndarray, bundle: ModelBundle) -> np.ndarray:
    """The labels, missing (NaN) for the findings the model never learned: on another source's version a
    model is scored over the findings both label."""
    learned = set(bundle.findings_learned)
    out = labels.copy()
    out[:, [i for i, f in enumerate(FINDINGS) if f not in learned]] = np.nan
    return out


def report(
    model_name: str,
    model: Classifier,
    bundle: ModelBundle,
    version: DatasetVersion,
    split: str,
    predictions: Predictions,
    thresholds: list[float],
    threshold_rule: str,
    specificity_target: float | None,
    n_boot: int,
    seed: int,
    out_dir: str | None,
    overlays: int,
    info: DistInfo,
    mixed: str | None = None,
) -> Evaluation:
    """Metrics at ``thresholds`` and localization from probabilities in hand; evaluation.json, curves and
    heatmap overlays into ``out_dir``. Training's MLflow plug-in reports its last validation this way.

    ``mixed``: the rows come from a mixed manifest's versions (their digests joined by ``+``), whose boxes no
    single version holds: metrics and curves only, no localization."""
    probs, labels, rows = predictions.probs, predictions.labels, predictions.rows
    metrics = evaluate_predictions(labels, probs, thresholds, n_boot=n_boot, seed=seed, groups=rows.patient_ids)
    located = LocalizedSplit({}, {}, (), ())
    if mixed is None:
        store = shard_store(version, bundle)
        located = localize(model, version, store, rows, bundle.image_size, seed, info, overlays)
    result = Evaluation(
        model=model_name,
        dataset=mixed or version.digest,
        split=split,
        n=len(rows),
        threshold_rule=threshold_rule,
        specificity_target=specificity_target,
        mean_auroc=metrics.mean_auroc,
        findings=metrics.findings,
        localization=located.scores,
        localization_random=located.random,
        model_dataset=bundle.dataset_digest,
        scored_findings=tuple(f for f, m in metrics.findings.items() if m.n > 0),
    )
    if out_dir:
        storage.write_text(storage.join(out_dir, "evaluation.json"), result.to_json())
        curves = roc_pr_chart(labels, probs, f"{split}, n = {len(rows)}")
        storage.write_bytes(storage.join(out_dir, "curves.png"), curves)
        for _, name, png in located.overlays:
            storage.write_bytes(storage.join(out_dir, "heatmaps", name), png)
    return result


def _random_heatmap(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=shape[0] / 16)
    return (noise - noise.min()) / max(noise.max() - noise.min(), 1e-12)


CAM_BATCH = 32  # images per forward pass when drawing class activation maps


@dataclass(frozen=True)
class LocalizedSplit:
    """CAM boxes of a split's true boxes: T(IoBB) scores, the random floor, each box, and overlays of some."""

    scores: Mapping[str, LocalizationScore]
    random: Mapping[str, LocalizationScore]
    boxes: tuple[LocalizedBox, ...]
    overlays: tuple[tuple[int, str, bytes], ...]  # (index into boxes, file name, PNG)


def localize(
    model: Classifier,
    version: DatasetVersion,
    store: AnyShardStore,
    rows: Rows,
    image_size: int,
    seed: int,
    info: DistInfo,
    overlays: int = 16,
) -> LocalizedSplit:
    """CAM boxes for every true box of the rows' images (one forward per batch of images), scored by T(IoBB),
    beside the same procedure on random heatmaps; overlays for ``overlays`` boxes, findings taken in turn."""
    boxes = version.boxes()
    position = {image_id: i for i, image_id in enumerate(rows.image_ids)}
    boxes = boxes.filter(pc.is_in(boxes["image_id"], pa.array(list(position)))).to_pylist()
    if not boxes:
        return LocalizedSplit({}, {}, (), ())
    scale = BOX_FRAME / image_size  # heatmap px -> the 1024 px frame of the boxes
    shown_scale = store.size / image_size  # heatmap px -> the stored image's px, where overlays are drawn
    rng = np.random.default_rng(seed)
    truth: dict[str, list] = {}
    predicted: dict[str, list] = {}
    random_pred: dict[str, list] = {}
    found: dict[int, LocalizedBox] = {}
    drawn: list[tuple[int, str, bytes]] = []
    shown = set(gallery_order([b["finding"] for b in boxes], overlays))
    images = sorted({position[b["image_id"]] for b in boxes})
    for start in range(0, len(images), CAM_BATCH):
        batch = np.array(images[start : start + CAM_BATCH])
        stored = gather(store, rows, batch)  # uint8 [n, side, side] at the shards' size
        pixels = resize(to_device(stored, info), image_size)
        maps = class_activation_maps(model, pixels).cpu().numpy()  # [n, 14, S, S]
        where = {int(i): k for k, i in enumerate(batch)}
        for index, box in ((j, b) for j, b in enumerate(boxes) if position[b["image_id"]] in where):
            k, c = where[position[box["image_id"]]], FINDINGS.index(box["finding"])
            heatmap = maps[k, c]
            x, y, w, h, _ = heatmap_box(heatmap)
            rx, ry, rw, rh, _ = heatmap_box(_random_heatmap(heatmap.shape, rng))
            true_box = (box["x"], box["y"], box["w"], box["h"])
            cam_box = (x * scale, y * scale, w * scale, h * scale)
            truth.setdefault(box["finding"], []).append(true_box)
            predicted.setdefault(box["finding"], []).append(cam_box)
            random_pred.setdefault(box["finding"], []).append((rx * scale, ry * scale, rw * scale, rh * scale))
            found[index] = LocalizedBox(box["image_id"], box["finding"], true_box, cam_box, iobb(cam_box, true_box))
            if index in shown:  # drawn on the stored image, the heatmap upsampled to it
                marks = [
                    (f"{box['finding']} (truth)", tuple(v * store.size / BOX_FRAME for v in true_box), TRUTH_BOX),
                    (f"CAM box, IoBB {found[index].iobb:.2f}", tuple(v * shown_scale for v in (x, y, w, h)), MODEL_BOX),
                ]
                title = f"{box['image_id']}: {box['finding']}"
                name = f"{box['image_id'][:-4]}_{box['finding']}.png"
                drawn.append((index, name, heatmap_overlay(stored[k], heatmap, marks, title)))
    return LocalizedSplit(
        localization_accuracy(predicted, truth),
        localization_accuracy(random_pred, truth),
        tuple(found[i] for i in range(len(boxes))),
        tuple(sorted(drawn)),
    )
