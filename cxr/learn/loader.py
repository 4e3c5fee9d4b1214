"""Training batches prepared ahead: a background thread gathers the next batches from the memory-mapped
shards, pins them and starts their copy to the GPU (on a side stream) while the current batch trains.

Nothing changes what a step sees: the batches come in the order they were planned, uint8 on the
device; the step converts and augments them there. On CPU the thread's gathering overlaps with the
step's compute (numpy copies and torch kernels release the GIL).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cxr.learn.shards import AnyShardStore, Rows, gather

PREFETCH_DEPTH = 3  # batches ready ahead of the step: enough to hide a slow shard read, little memory


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # uint8 [B, 1, S, S] on the device
    targets: torch.Tensor  # float32 [B, 14] on the device; NaN where the label is missing (the loss masks it)
    places: np.ndarray  # each sample's place in the epoch's global order (its augmentation row)


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_DONE = object()


class Prefetcher:
    """Iterate the planned batches; a thread keeps up to ``depth`` of them ready on the device."""

    def __init__(
        self,
        store: AnyShardStore,
        rows: Rows,
        plan: Sequence[tuple[np.ndarray, np.ndarray]],  # (row positions, global places) per batch
        device: torch.device,
        depth: int = PREFETCH_DEPTH,
    ) -> None:
        self.store, self.rows, self.plan, self.device = store, rows, plan, device
        self.queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.thread = threading.Thread(target=self._work, name="cxr-prefetch", daemon=True)
        self.thread.start()

    def _load(self, positions: np.ndarray, places: np.ndarray) -> tuple[Batch, object]:
        images = torch.from_numpy(gather(self.store, self.rows, positions)).unsqueeze(1)
        targets = torch.from_numpy(self.rows.labels[positions])
        if self.stream is None:
            return Batch(images, targets, places), None
        with torch.cuda.stream(self.stream):
            batch = Batch(
                images.pin_memory().to(self.device, non_blocking=True),
                targets.pin_memory().to(self.device, non_blocking=True),
                places,
            )
            event = torch.cuda.Event()
            event.record(self.stream)
        return batch, event

    def _put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for positions, places in self.plan:
                if self.stop.is_set() or not self._put(self._load(positions, places)):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the training thread, which raises it
            self._put(_Failed(err))
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            batch, event = item  # type: ignore[misc]
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                batch.images.record_stream(current)  # the allocator must not reuse these before the step ends
                batch.targets.record_stream(current)
            yield batch

    def close(self) -> None:
        """Stop the thread (e.g. after max_steps) and let go of the batches it holds."""
        self.stop.set()
        self.thread.join(timeout=30)
        while not self.queue.empty():
            self.queue.get_nowait()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
