"""The model behind the endpoints: uploads decoded in worker threads, scored one batch at a time, as JSON.

Decoding (and drawing overlays) runs in worker threads, at most one per core at a time, so the event
loop keeps answering while a large PNG inflates and the memory decoding takes is bounded by the cores,
not by the number of clients. Scoring runs in one thread of its own, one batch at a time: torch already
uses every core for one batch, and two at once would only share them. The model is loaded in that
thread too: torch's OpenMP threads then serve one thread only (loaded in the main thread and scored in
another, DenseNet-121 took 0.09 s a pass instead of 0.05 s on 2 cores). Nothing of a request is kept
after its answer.

A result is :class:`cxr.learn.predictor.Prediction` as plain JSON (:func:`cxr.records.to_plain`): the
image's name, its size, the 14 probabilities, and each finding above its threshold with its box in the
image's own pixels and in the 1024 px frame, and its heatmap share (``extent_of``: what that is a share of).
With overlays, each finding also carries ``overlay_png``: base64 of the PNG ``cxr predict --heatmaps``
writes (the image at its own resolution under a title band, the heatmap and box drawn over it).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import numpy as np

from cxr.data.decode import ImageRejected
from cxr.data.source_image import ANY_FORMAT, decode_source_image
from cxr.findings import FINDINGS
from cxr.records import to_plain
from cxr.serving.batch import Upload
from cxr.serving.errors import rejection

if TYPE_CHECKING:
    from cxr.learn.predictor import Predictor, Scored


def decoded(data: bytes) -> np.ndarray:
    """An upload's 8-bit gray pixels by ``cxr predict``'s rule, or :class:`ImageRejected` saying why not."""
    return np.asarray(decode_source_image(data, ANY_FORMAT))


def _overlay_base64(scored: Scored, finding: str) -> str:
    return base64.b64encode(scored.overlay_png(finding)).decode("ascii")


class Scorer:
    """The :class:`Predictor` ``load`` returns, loaded in the scoring thread and shared by every request;
    ``load``'s exceptions are raised here."""

    def __init__(self, load: Callable[[], Predictor], workers: int | None = None) -> None:
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-scoring")
        try:
            self.predictor = self._torch.submit(load).result()
        except BaseException:
            self.close()
            raise
        self._working = anyio.CapacityLimiter(workers or os.cpu_count() or 1)

    def close(self) -> None:
        """Stop the scoring thread once the batch it is scoring, if any, is done."""
        self._torch.shutdown(wait=False, cancel_futures=True)

    def described(self) -> dict[str, Any]:
        """The model as ``GET /health`` states it."""
        bundle = self.predictor.bundle
        return {
            "model": bundle.model_name,
            "image_size": self.predictor.size,
            "shard_size": bundle.shard_size,
            "device": str(self.predictor.device),
            "findings": list(FINDINGS),
            "thresholds": dict(zip(FINDINGS, self.predictor.thresholds, strict=True)),
        }

    async def one(self, data: bytes, name: str, overlays: bool) -> dict[str, Any]:
        """The result for one image file's bytes; :class:`ImageRejected` if they are no usable image."""
        gray = await anyio.to_thread.run_sync(decoded, data, limiter=self._working)
        (scored,) = await self._score([gray], [name])
        return await self._as_json(scored, overlays)

    async def many(self, uploads: list[Upload], overlays: bool) -> list[dict[str, Any]]:
        """A result per upload, in order: its prediction, or ``{"image": name, "error": why}``; the usable
        ones scored in one pass of the model."""
        grays: list[np.ndarray | None] = [None] * len(uploads)
        errors: list[str | None] = [None] * len(uploads)

        async def decode(k: int) -> None:
            try:
                grays[k] = await anyio.to_thread.run_sync(decoded, uploads[k].data, limiter=self._working)
            except ImageRejected as err:
                errors[k] = rejection(err)

        async with anyio.create_task_group() as group:
            for k in range(len(uploads)):
                group.start_soon(decode, k)
        good = [k for k, gray in enumerate(grays) if gray is not None]
        scored = await self._score([grays[k] for k in good], [uploads[k].name for k in good])  # type: ignore[misc]
        results: list[dict[str, Any]] = [{"image": u.name, "error": e} for u, e in zip(uploads, errors, strict=True)]
        for k, one in zip(good, scored, strict=True):
            results[k] = await self._as_json(one, overlays)
        return results

    async def _score(self, grays: list[np.ndarray], names: list[str]) -> list[Scored]:
        if not grays:
            return []
        return await asyncio.wrap_future(self._torch.submit(self.predictor.score, grays, names))

    async def _as_json(self, scored: Scored, overlays: bool) -> dict[str, Any]:
        plain: dict[str, Any] = to_plain(scored.prediction)
        if not overlays:
            return plain

        async def draw(finding: dict[str, Any]) -> None:
            finding["overlay_png"] = await anyio.to_thread.run_sync(
                _overlay_base64, scored, finding["finding"], limiter=self._working
            )

        async with anyio.create_task_group() as group:
            for finding in plain["findings"]:
                group.start_soon(draw, finding)
        return plain
