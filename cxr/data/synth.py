"""``cxr synth``: a synthetic dataset in the exact NIH layout, with real NIH prevalence and co-occurrence.

Label sets are drawn from the frequencies of the real v2020 table (``cxr/data/nih_profile.json``, derived
by ``scripts/make_nih_profile.py``) by systematic sampling, so every finding's count stays close to
its real prevalence even on small datasets. Patients get several images (follow-ups), as in the
release. Each finding leaves a sign inside a box that ``BBox_List_2017.csv`` records (in 1024 px
coordinates, like the real list), so localization can be scored. The same seed gives the same bytes:
each image has its own random stream seeded from (seed, index), whatever the number of workers.

Outputs are never silently replaced. ``.cxr-synth.json`` in the output records the settings (and, once
the archive is complete, its result); the label table is written last, so an interrupted synth leaves
no archive that reads as complete. Into a folder that is not empty, a synth of the same settings
finishes or reuses what is there; anything else is refused unless ``overwrite`` (which first removes
the old archive's images and tables). Rendering processes ignore SIGINT (a Ctrl-C reaches the whole
process group): the parent stops them when it is interrupted.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import posixpath
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import numpy as np

from cxr import storage
from cxr.data.chexpert_source import TABLE_NAMES as CHEXPERT_TABLES
from cxr.data.decode import DecodeLimits
from cxr.data.dicom_source import LABELS as DICOM_LABELS
from cxr.data.source import BOX_LIST_NAMES, LABEL_TABLE_NAMES, SPLIT_LIST_NAMES, is_image_folder
from cxr.data.synth_layout import encode, image_path, label_table_name, place_images, write_tables
from cxr.data.synth_render import Acquisition, render
from cxr.findings import FINDINGS, NO_FINDING
from cxr.records import to_plain

Edition = Literal["2017", "v2020"]
SynthFormat = Literal["nih", "chexpert", "dicom"]  # cxr.data.synth_chexpert, cxr.data.synth_dicom
SYNTH_FORMATS: tuple[str, ...] = ("nih", "chexpert", "dicom")
Job = tuple[int, str, dict[str, Any]]  # index, path under the output, row
OFFICIAL_TEST_SHARE = 25_596 / 112_120  # the official test list's share of images
MAX_IMAGES_PER_PATIENT = 30  # the release's tail reaches 184; small datasets would be a handful of patients
MARKER = ".cxr-synth.json"  # {"settings": ..., "result": ... or null until the archive is complete}


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
    format: SynthFormat = "nih"  # the layout written; the images and their findings do not depend on it
    # A planted subgroup effect, for checking that a per-sex report finds it: that sex's signs are drawn
    # at strength * fainter_strength. Only pixels change; labels, boxes and every random draw stay the same.
    fainter_sex: str | None = None  # "M", "F" or None (no effect)
    fainter_strength: float = 0.3  # multiplier of strength for fainter_sex's images, in [0, 1]

    def __post_init__(self) -> None:
        if self.format not in SYNTH_FORMATS:
            raise ValueError(f"format must be one of {', '.join(SYNTH_FORMATS)}, got {self.format!r}")
        if self.n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {self.n_images}")
        if not 16 <= self.size <= 4096:
            raise ValueError(f"size must be in [16, 4096] px, got {self.size}")
        if self.edition not in ("2017", "v2020"):
            raise ValueError(f"edition must be '2017' or 'v2020', got {self.edition!r}")
        if self.strength < 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")
        if self.per_folder < 1:
            raise ValueError(f"per_folder must be >= 1, got {self.per_folder}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0.2 <= self.prevalence_power <= 2.0:
            raise ValueError(f"prevalence_power must be in [0.2, 2], got {self.prevalence_power}")
        if self.fainter_sex not in (None, "M", "F"):
            raise ValueError(f"fainter_sex must be 'M', 'F' or None, got {self.fainter_sex!r}")
        if not 0 <= self.fainter_strength <= 1:
            raise ValueError(f"fainter_strength must be in [0, 1], got {self.fainter_strength}")


@dataclass(frozen=True)
class SynthResult:
    out: str
    n_images: int
    n_patients: int
    n_boxes: int
    n_test: int
    positives: Mapping[str, int] = field(default_factory=dict)
    reused: bool = False  # True: the output already held this very synth, complete; nothing was written


class SynthOutputExistsError(ValueError):
    """The output holds files that are not this synth; ``overwrite`` replaces them."""


def check_ingestible(size: int, limits: DecodeLimits | None = None) -> None:
    """Refuse an image side that ingest would quarantine as ``bad_dimensions`` (smaller than ``min_side``)."""
    limits = limits or DecodeLimits()
    if size < limits.min_side:
        raise ValueError(
            f"size {size} px: ingest rejects images smaller than {limits.min_side} px (bad_dimensions); "
            f"use --size {limits.min_side} or more"
        )


def _settings(config: SynthConfig) -> dict[str, Any]:
    """What decides the output's bytes: every setting but where it goes and how many processes render it."""
    plain = to_plain(config)
    if plain["format"] == "nih":  # synths from before formats existed wrote no format: the same settings
        del plain["format"]
    if plain["fainter_sex"] is None:  # no effect (fainter_strength then changes no byte), as before it existed
        del plain["fainter_sex"], plain["fainter_strength"]
    return {k: v for k, v in plain.items() if k not in ("out", "workers")}


def _read_marker(out: str) -> dict[str, Any] | None:
    try:
        marker = json.loads(storage.read_text(storage.join(out, MARKER)))
    except (FileNotFoundError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _write_marker(config: SynthConfig, result: SynthResult | None) -> None:
    # neither where it went nor whether it was reused: the same settings give the same bytes, this file too
    plain = None if result is None else {k: v for k, v in to_plain(result).items() if k not in ("out", "reused")}
    marker = {"settings": _settings(config), "result": plain}
    storage.write_text(storage.join(config.out, MARKER), json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _archive_files(out: str) -> list[str]:
    """What a synth (or another NIH archive) holds at ``out``: its image folders and its tables."""
    names = {*LABEL_TABLE_NAMES, *BOX_LIST_NAMES, *SPLIT_LIST_NAMES, *CHEXPERT_TABLES, DICOM_LABELS, MARKER}
    folders = ("train", "valid", "images")  # chexpert, dicom
    found = [d for d in storage.list_dirs(out) if is_image_folder(d) or posixpath.basename(d) in folders]
    return found + [f for f in storage.list_files(out) if posixpath.basename(f) in names]


def prepare_output(config: SynthConfig, overwrite: bool = False) -> SynthResult | None:
    """Check the output before anything is rendered: the result of the same synth, complete, to reuse; else None.

    An empty or missing output, or one holding an unfinished synth of the same settings, is None (render).
    Any other content is refused (:class:`SynthOutputExistsError`) unless ``overwrite``, which removes the
    old archive's image folders and tables (files of other names are left alone).
    """
    out = config.out
    if storage.is_file(out):
        raise NotADirectoryError(0, "is a file", out)
    present = storage.list_files(out, recursive=True) if storage.exists(out) else []
    if not present:
        return None
    marker = _read_marker(out)
    same = marker is not None and marker.get("settings") == _settings(config)
    if same and not overwrite:
        result = marker.get("result") if marker else None
        label_table = label_table_name(config)
        if isinstance(result, dict) and storage.exists(storage.join(out, label_table)):
            return SynthResult(**{**result, "out": out, "reused": True})
        return None  # an unfinished synth of the same settings: render again (same bytes)
    if not overwrite:
        if marker is not None:
            theirs = marker.get("settings") or {}
            ours = _settings(config)
            changed = ", ".join(
                f"{k} {theirs.get(k)!r} -> {ours[k]!r}" for k in sorted(ours) if theirs.get(k) != ours[k]
            )
            what = f"a synth of other settings ({changed})"
        else:
            what = f"{len(present)} files that no synth of these settings wrote"
        raise SynthOutputExistsError(
            f"{out} already holds {what}; choose an empty folder, or pass --overwrite to remove its images "
            "and tables first"
        )
    for url in _archive_files(out):
        storage.remove(url, recursive=True)
    return None


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


def _render_chunk(config: SynthConfig, jobs: list[Job]) -> list[list[tuple[str, float, float, float, float]]]:
    """Render and write a chunk of images; returns each image's boxes in 1024 px coordinates."""
    scale = 1024.0 / config.size
    result = []
    for index, image_id, row in jobs:
        labels = row["labels"]
        findings = [] if labels == NO_FINDING else labels.split("|")
        rng = np.random.default_rng([config.seed, 1, index])
        pixels, boxes = render(config.size, findings, rng, _sign_strength(config, row), config.acquisition)
        storage.write_bytes(image_path(config, index, image_id), encode(config, pixels, index, row))
        result.append([(b.finding, b.x * scale, b.y * scale, b.w * scale, b.h * scale) for b in boxes])
    return result


def _sign_strength(config: SynthConfig, row: dict[str, Any]) -> float:
    """The contrast of one image's signs: lower for the planted subgroup. ``render`` makes the same random
    draws whatever the strength (it only scales each sign's amplitude), so places and boxes do not move."""
    if config.fainter_sex is not None and row["sex"] == config.fainter_sex:
        return config.strength * config.fainter_strength
    return config.strength


def _ignore_interrupts() -> None:
    """In a rendering process: a Ctrl-C reaches the whole process group; the parent decides, and stops us
    with SIGTERM (whose default action ends the process; the handlers a fork copied from the parent go)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def _render_chunk_star(args: tuple[SynthConfig, list[Job]]) -> list:
    return _render_chunk(*args)


def _render_all(
    config: SynthConfig, chunks: list[list[Job]], progress: Callable[[int], None] | None
) -> list[list[tuple[str, float, float, float, float]]]:
    """Every chunk's boxes, in order; rendering processes are stopped (never left behind) on any interruption."""
    boxes: list[list[tuple[str, float, float, float, float]]] = []
    done = 0
    try:
        if config.workers == 1:
            for c in chunks:
                boxes.extend(_render_chunk(config, c))
                done += len(c)
                if progress:
                    progress(len(c))
            return boxes
        pool = multiprocessing.get_context().Pool(config.workers, initializer=_ignore_interrupts)
        try:
            for c, rendered in zip(chunks, pool.imap(_render_chunk_star, [(config, c) for c in chunks]), strict=True):
                boxes.extend(rendered)
                done += len(c)
                if progress:
                    progress(len(c))
            pool.close()
        except BaseException:
            pool.terminate()  # SIGTERM to every rendering process, then joined
            raise
        finally:
            pool.join()
        return boxes
    except KeyboardInterrupt:
        from cxr import signals

        signals.note(
            f"synth stopped after {done} of {config.n_images} images, before the label table; "
            "the same command finishes it"
        )
        raise


def synthesize(
    config: SynthConfig, progress: Callable[[int], None] | None = None, overwrite: bool = False
) -> SynthResult:
    """Write a synthetic NIH-layout dataset to ``config.out`` (a folder or an ``s3://`` prefix).

    The output is checked first (:func:`prepare_output`): the same synth, complete, is reused, not redone.
    """
    reused = prepare_output(config, overwrite)
    if reused is not None:
        if progress:
            progress(config.n_images)
        return reused
    profile = load_profile()
    the_plan = plan(config, profile)
    rows = the_plan.rows
    place_images(config, rows, the_plan.test_patients)
    jobs = [(i, r["image_id"], r) for i, r in enumerate(rows)]
    chunk = max(1, min(64, math.ceil(len(jobs) / (config.workers * 4))))
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    storage.makedirs(config.out)
    _write_marker(config, None)
    boxes = _render_all(config, chunks, progress)
    n_boxes, n_test = write_tables(config, rows, the_plan.test_patients, boxes)
    return _finish(config, rows, n_boxes, n_test)


def _finish(config: SynthConfig, rows: list[dict[str, Any]], n_boxes: int, n_test: int) -> SynthResult:
    """The result, recorded in the marker: the synth is complete."""
    positives = dict.fromkeys(FINDINGS, 0)
    for r in rows:
        if r["labels"] != NO_FINDING:
            for f in r["labels"].split("|"):
                positives[f] += 1
    result = SynthResult(
        out=config.out,
        n_images=len(rows),
        n_patients=rows[-1]["patient_id"],
        n_boxes=n_boxes,
        n_test=n_test,
        positives=positives,
    )
    _write_marker(config, result)
    return result
