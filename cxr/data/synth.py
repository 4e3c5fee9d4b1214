"""``cxr synth``: a synthetic dataset in the exact NIH layout, with real NIH prevalence and co-occurrence.

Label sets are drawn from the frequencies of the real v2020 table (``cxr/data/nih_profile.json``, derived
by ``scripts/make_nih_profile.py``) by systematic sampling, so every finding's count stays close to
its real prevalence even on small datasets. Patients get several images (follow-ups), as in the
release. Each finding leaves a sign inside a box that ``BBox_List_2017.csv`` records (in 1024 px
coordinates, like the real list), so localization can be scored. The same seed gives the same bytes:
each image has its own random stream seeded from (seed, index), whatever the number of workers.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import numpy as np
from PIL import Image

from cxr import storage
from cxr.data.synth_render import Acquisition, render
from cxr.findings import FINDINGS, NO_FINDING

Edition = Literal["2017", "v2020"]
LABEL_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
OFFICIAL_TEST_SHARE = 25_596 / 112_120  # the official test list's share of images
MAX_IMAGES_PER_PATIENT = 30  # the release's tail reaches 184; small datasets would be a handful of patients


@dataclass(frozen=True)
class SynthConfig:
    """What to make. Defaults give a small dataset that trains in minutes on a laptop CPU."""

    out: str
    n_images: int
    size: int = 256  # px; the release's PNGs are 1024 px, boxes are scaled to that
    seed: int = 0
    edition: Edition = "v2020"  # "2017": the original table with a trailing comma on every line
    strength: float = 1.0  # contrast of each finding's sign; 0 makes the labels unlearnable
    per_folder: int = 10_000  # images per images_NNN/images folder, as in the release
    workers: int = 1  # processes rendering PNGs; the output does not depend on it
    acquisition: Acquisition = Acquisition()  # contrast, noise, zoom, offset: a shifted source turns these
    prevalence_power: float = 1.0  # label-set frequencies raised to this power (< 1: rare findings commoner)

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {self.n_images}")
        if not 16 <= self.size <= 4096:
            raise ValueError(f"size must be in [16, 4096] px, got {self.size}")
        if self.edition not in ("2017", "v2020"):
            raise ValueError(f"edition must be '2017' or 'v2020', got {self.edition!r}")
        if self.strength < 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")
        if self.per_folder < 1 or self.workers < 1:
            raise ValueError("per_folder and workers must be >= 1")
        if not 0.2 <= self.prevalence_power <= 2.0:
            raise ValueError(f"prevalence_power must be in [0.2, 2], got {self.prevalence_power}")


@dataclass(frozen=True)
class SynthResult:
    out: str
    n_images: int
    n_patients: int
    n_boxes: int
    n_test: int
    positives: Mapping[str, int] = field(default_factory=dict)


def load_profile() -> dict[str, Any]:
    """The aggregate counts of the real NIH v2020 label table."""
    return json.loads(resources.files("cxr.data").joinpath("nih_profile.json").read_text())


def _systematic(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices drawn so that each count is within 1 of n * weight (low-variance sampling)."""
    cum = np.cumsum(weights / weights.sum())
    points = (rng.random() + np.arange(n)) / n
    return np.minimum(np.searchsorted(cum, points, side="right"), len(weights) - 1)


def _choice(counts: dict[str, int], n: int, rng: np.random.Generator) -> list[str]:
    keys = list(counts)
    p = np.array([counts[k] for k in keys], dtype=np.float64)
    return [keys[i] for i in rng.choice(len(keys), size=n, p=p / p.sum())]


@dataclass
class _Plan:
    rows: list[dict[str, Any]]
    test_patients: set[int]


def plan(config: SynthConfig, profile: dict[str, Any]) -> _Plan:
    """Decide every row (patient, follow-up, labels, demographics) before any pixel is drawn."""
    rng = np.random.default_rng([config.seed, 0])
    n = config.n_images
    sets = [s for s, _ in profile["label_sets"]]
    weights = np.array([c for _, c in profile["label_sets"]], dtype=np.float64) ** config.prevalence_power
    label_sets = [sets[i] for i in rng.permutation(_systematic(weights, n, rng))]

    per_patient = {int(k): v for k, v in profile["images_per_patient"].items() if int(k) <= MAX_IMAGES_PER_PATIENT}
    sizes_k = np.array(list(per_patient), dtype=np.int64)
    sizes_p = np.array(list(per_patient.values()), dtype=np.float64)
    counts: list[int] = []
    while sum(counts) < n:
        counts.append(int(rng.choice(sizes_k, p=sizes_p / sizes_p.sum())))
    counts[-1] -= sum(counts) - n

    ages = {int(k): v for k, v in profile["ages"].items()}
    sexes = _choice(profile["sexes"], len(counts), rng)
    first_ages = [int(a) for a in _choice({str(k): v for k, v in ages.items()}, len(counts), rng)]
    views = _choice(profile["views"], n, rng)
    size_rows = profile["original_sizes"]
    size_idx = rng.choice(len(size_rows), size=n, p=np.array([r[3] for r in size_rows]) / sum(r[3] for r in size_rows))
    test_patients = {p + 1 for p in range(len(counts)) if rng.random() < OFFICIAL_TEST_SHARE}

    rows = []
    i = 0
    for p, k in enumerate(counts):
        for follow_up in range(k):
            w, h, spacing, _ = size_rows[size_idx[i]]
            rows.append(
                {
                    "image_id": f"{p + 1:08d}_{follow_up:03d}.png",
                    "labels": label_sets[i],
                    "follow_up": follow_up,
                    "patient_id": p + 1,
                    "age": min(first_ages[p] + follow_up // 3, 95),
                    "sex": sexes[p],
                    "view": views[i],
                    "width": w,
                    "height": h,
                    "spacing": spacing,
                }
            )
            i += 1
    return _Plan(rows, test_patients)


def _image_path(config: SynthConfig, index: int, image_id: str) -> str:
    folder = f"images_{index // config.per_folder + 1:03d}"
    return storage.join(config.out, folder, "images", image_id)


def _render_chunk(
    config: SynthConfig, jobs: list[tuple[int, str, str]]
) -> list[list[tuple[str, float, float, float, float]]]:
    """Render and write a chunk of images; returns each image's boxes in 1024 px coordinates."""
    scale = 1024.0 / config.size
    result = []
    for index, image_id, labels in jobs:
        findings = [] if labels == NO_FINDING else labels.split("|")
        rng = np.random.default_rng([config.seed, 1, index])
        pixels, boxes = render(config.size, findings, rng, config.strength, config.acquisition)
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=6)
        storage.write_bytes(_image_path(config, index, image_id), buf.getvalue())
        result.append([(b.finding, b.x * scale, b.y * scale, b.w * scale, b.h * scale) for b in boxes])
    return result


def _label_table(rows: list[dict[str, Any]], edition: Edition) -> str:
    end = "," if edition == "2017" else ""
    lines = [LABEL_HEADER + end]
    for r in rows:
        lines.append(
            f"{r['image_id']},{'|'.join(sorted(r['labels'].split('|')))},{r['follow_up']},{r['patient_id']},{r['age']},{r['sex']},{r['view']},"
            f"{r['width']},{r['height']},{r['spacing']!r},{r['spacing']!r}{end}"
        )
    return "\n".join(lines) + "\n"


def synthesize(config: SynthConfig, progress: Callable[[int], None] | None = None) -> SynthResult:
    """Write a synthetic NIH-layout dataset to ``config.out`` (a folder or an ``s3://`` prefix)."""
    profile = load_profile()
    the_plan = plan(config, profile)
    rows = the_plan.rows
    jobs = [(i, r["image_id"], r["labels"]) for i, r in enumerate(rows)]
    chunk = max(1, min(64, math.ceil(len(jobs) / (config.workers * 4))))
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    boxes: list[list[tuple[str, float, float, float, float]]] = []
    storage.makedirs(config.out)
    if config.workers == 1:
        for c in chunks:
            boxes.extend(_render_chunk(config, c))
            if progress:
                progress(len(c))
    else:
        with ProcessPoolExecutor(max_workers=config.workers) as pool:
            for c, done in zip(chunks, pool.map(_render_chunk, [config] * len(chunks), chunks), strict=True):
                boxes.extend(done)
                if progress:
                    progress(len(c))

    name = "Data_Entry_2017.csv" if config.edition == "2017" else "Data_Entry_2017_v2020.csv"
    storage.write_text(storage.join(config.out, name), _label_table(rows, config.edition))
    box_lines = [BOX_HEADER]
    for r, image_boxes in zip(rows, boxes, strict=True):
        for finding, x, y, w, h in image_boxes:
            label = "Infiltrate" if finding == "Infiltration" else finding  # the real list's spelling
            box_lines.append(f"{r['image_id']},{label},{x:.3f},{y:.3f},{w:.3f},{h:.3f}")
    storage.write_text(storage.join(config.out, "BBox_List_2017.csv"), "\n".join(box_lines) + "\n")
    test = [r["image_id"] for r in rows if r["patient_id"] in the_plan.test_patients]
    train_val = [r["image_id"] for r in rows if r["patient_id"] not in the_plan.test_patients]
    storage.write_text(storage.join(config.out, "train_val_list.txt"), "".join(f"{i}\n" for i in train_val))
    storage.write_text(storage.join(config.out, "test_list.txt"), "".join(f"{i}\n" for i in test))

    positives = dict.fromkeys(FINDINGS, 0)
    for r in rows:
        if r["labels"] != NO_FINDING:
            for f in r["labels"].split("|"):
                positives[f] += 1
    return SynthResult(
        out=config.out,
        n_images=len(rows),
        n_patients=rows[-1]["patient_id"],
        n_boxes=sum(len(b) for b in boxes),
        n_test=len(test),
        positives=positives,
    )
