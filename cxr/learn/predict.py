"""``cxr predict``: the 14 probabilities for image files, and for each finding above its threshold,
where (a box in the image's own pixels and in the 1024 px frame of NIH's boxes) and how much of the image its
heatmap marks (the share of the image's pixels where the finding's class activation map is at least
``HEATMAP_THRESHOLD`` of its range, every region counted, not only the boxed one), with heatmap overlays at the
image's own resolution. Scoring: :class:`cxr.learn.predictor.Predictor`.

Images go through the same decoding and 8-bit gray rule as ingest (:mod:`cxr.data.decode`), so a file
ingest would quarantine is refused here with the same reason. Files named one by one are all checked before
torch and the model are loaded (seconds): a bad file is named at once, all bad files in one line. A folder or
a glob pattern is read as it is scored, in batches, and a file in it that cannot be used gets its own record
(:class:`Refused`) among the predictions: every file is accounted for, and one bad file stops nothing.
"""

from __future__ import annotations

import os
import posixpath
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cxr import storage
from cxr.data.decode import ImageRejected
from cxr.data.quarantine import Reason
from cxr.data.source_image import ANY_FORMAT, decode_source_image
from cxr.learn.config import PREDICT_BATCH
from cxr.learn.reference import check_device, model_reference
from cxr.storage import StorageError

if TYPE_CHECKING:  # torch and the model code load after the inputs are checked
    from cxr.learn.predictor import Prediction, Predictor, Scored

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")  # what a folder given to `cxr predict` is read for
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Refused:
    """A file of a folder or glob that could not be scored, and why."""

    image: str
    error: str


def _problem_of(path: str) -> tuple[str | None, np.ndarray | None]:
    """(why ``path`` cannot be predicted on, None) or (None, its 8-bit gray pixels)."""
    try:
        if not storage.is_file(path):
            return ("a folder, not an image file" if storage.exists(path) else "not found"), None
        return None, np.asarray(decode_source_image(storage.read_bytes(path), ANY_FORMAT))
    except ImageRejected as err:
        return (err.detail if err.reason == Reason.UNREADABLE_IMAGE else f"{err.reason}: {err.detail}"), None
    except PermissionError:
        return "permission denied", None
    except (OSError, StorageError) as err:
        return f"cannot be read: {err}", None


def check_images(paths: list[str]) -> None:
    """Raise ValueError naming every path that is not a readable image ingest would accept (one line)."""
    expand(paths, folders=False)


def is_many(argument: str) -> bool:
    """Whether an argument names many images (a folder, or a glob pattern) rather than one file."""
    return any(c in argument for c in GLOB_CHARS) or (storage.exists(argument) and not storage.is_file(argument))


def expand(arguments: list[str], folders: bool = True) -> list[str]:
    """The image files the arguments name, in order: a file as it is; a folder's image files (by suffix, every
    level below it, sorted); a glob pattern's matches (sorted). Raises one ValueError naming every argument
    that cannot be used: a file ingest would not accept, a folder or pattern without images (a typo is not an
    empty result). The files a folder or pattern finds are read later, each accounted for on its own."""
    if not arguments:
        raise ValueError("no images given: name PNG, JPEG or DICOM files, folders or patterns (local or s3://)")
    paths: list[str] = []
    bad: list[str] = []
    for argument in arguments:
        if folders and any(c in argument for c in GLOB_CHARS):
            found = storage.glob_files(argument)
            if not found:
                bad.append(f"{argument} (no file matches)")
        elif folders and storage.exists(argument) and not storage.is_file(argument):
            found = [p for p in storage.list_files(argument, recursive=True) if p.lower().endswith(IMAGE_SUFFIXES)]
            if not found:
                bad.append(f"{argument} (a folder without image files: {', '.join(IMAGE_SUFFIXES)})")
        else:
            found = [argument]
            why = _problem_of(argument)[0]
            if why:
                bad.append(f"{argument} ({why})")
        paths += found
    if bad:
        raise ValueError(
            f"{len(bad)} of {len(arguments)} inputs cannot be used: {'; '.join(bad)}. "
            "Give PNG, JPEG or DICOM images (local paths or s3:// URLs), as ingest reads them"
        )
    return paths


def _check_outputs(heatmaps_dir: str | None, device: str) -> None:
    if heatmaps_dir and storage.is_file(heatmaps_dir):
        raise ValueError(f"--heatmaps {heatmaps_dir} is a file: give a folder for the overlays (made if missing)")
    check_device(device)


def _write_overlay(scored: Scored, finding: str, target: str) -> None:
    storage.write_bytes(target, scored.overlay_png(finding))


class _Overlays:
    """Overlays drawn and written by threads while the next images are scored: encoding a full-resolution PNG
    (about 0.07 s at 1024 px) releases the GIL. At most two per thread wait to be drawn (each holds its image):
    scoring waits for the oldest beyond that, so a folder of many images does not pile up in memory. An
    overlay that could not be written fails the command."""

    def __init__(self, folder: str | None) -> None:
        self.folder = folder
        self.workers = os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(max_workers=self.workers) if folder else None
        self.drawn: deque[Future[None]] = deque()

    def add(self, scored: Scored) -> None:
        if self.pool is None or self.folder is None:
            return
        stem = posixpath.splitext(posixpath.basename(scored.prediction.image))[0]
        for finding in scored.heatmaps:
            target = storage.join(self.folder, f"{stem}_{finding}.png")
            self.drawn.append(self.pool.submit(_write_overlay, scored, finding, target))
            while len(self.drawn) > 2 * self.workers:
                self.drawn.popleft().result()

    def finish(self, cancel: bool = False) -> None:
        if self.pool is None:
            return
        self.pool.shutdown(wait=True, cancel_futures=cancel)
        if not cancel:
            for future in self.drawn:
                future.result()


def predict_images(
    paths: list[str], model_uri: str, heatmaps_dir: str | None = None, device: str = "cpu"
) -> list[Prediction]:
    """One result per image file named: probabilities, and findings above threshold with their box and heatmap
    share. Every image is checked first (:func:`check_images`), then the device and the overlay folder, and
    only then are torch and the model loaded."""
    check_images(paths)
    _check_outputs(heatmaps_dir, device)
    from cxr.learn.predictor import Predictor

    predictor = Predictor.load(model_reference(model_uri), device)
    return [p for p in predict_each(predictor, paths, heatmaps_dir) if not isinstance(p, Refused)]


def open_predictor(model_uri: str, heatmaps_dir: str | None = None, device: str = "cpu") -> Predictor:
    """The model for many images, once the overlay folder and the device are checked."""
    _check_outputs(heatmaps_dir, device)
    model_uri = model_reference(model_uri)
    from cxr.learn.predictor import Predictor

    return Predictor.load(model_uri, device)


def predict_each(
    predictor: Predictor,
    paths: list[str],
    heatmaps_dir: str | None = None,
    batch_size: int = PREDICT_BATCH,
    on_done: Callable[[int], None] | None = None,
) -> Iterator[Prediction | Refused]:
    """A result per path, in order, scored ``batch_size`` at a time; files are read and decoded by threads
    ahead of the model. ``on_done(n)`` is told of each batch done."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    overlays = _Overlays(heatmaps_dir)
    reading = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
    pending: dict[int, Future[tuple[str | None, np.ndarray | None]]] = {}
    try:
        for start in range(0, len(paths), batch_size):
            for k in range(start, min(start + 2 * batch_size, len(paths))):  # this batch and the next, read ahead
                if k not in pending:
                    pending[k] = reading.submit(_problem_of, paths[k])
            batch = paths[start : start + batch_size]
            results = [pending.pop(start + k).result() for k in range(len(batch))]
            good = [(p, gray) for p, (why, gray) in zip(batch, results, strict=True) if gray is not None]
            scored = iter(predictor.score([g for _, g in good], [p for p, _ in good]))
            for path, (why, _) in zip(batch, results, strict=True):
                if why is not None:
                    yield Refused(path, why)
                    continue
                one = next(scored)
                overlays.add(one)
                yield one.prediction
            if on_done:
                on_done(len(batch))
    except BaseException:  # an error or an interruption: the overlays not begun are not drawn
        reading.shutdown(wait=True, cancel_futures=True)
        overlays.finish(cancel=True)
        raise
    reading.shutdown(wait=True)
    overlays.finish()
