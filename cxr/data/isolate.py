"""A part whose Dask worker died: find the image that kills its worker, quarantine it, land the rest.

A crash in the decoder, or an image whose decoding takes more memory than the worker's limit
(cxr/data/cluster.py), kills the worker process. Dask tries the task on other workers
(``ALLOWED_FAILURES`` more times), then reports ``KilledWorker``. Such a part is then decoded again one
image at a time, each image its own Dask task and only one running, so that a death can only be that
image's; each gets the same bounded retries. An image whose task Dask reports ``KilledWorker`` is
quarantined as ``decode_crashed``, and the part is decoded once more without it. A worker that died for
another reason (killed from outside) quarantines nothing: every image then passes on its own.

A ``.tar.gz`` whose scan killed its workers is handled the same way, a chunk at a time: the scan keeps every
chunk it finished, so the image that killed it is in the first unfinished chunk
(:func:`cxr.data.tar_scan.unfinished_chunk` reads its images' bytes, decoding nothing); each of them is
decoded alone, and the scan runs again without the ones that kill a worker, until it finishes.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed import KilledWorker

from cxr.data.archives import ArchiveSpec
from cxr.data.decode import DecodeLimits, ImageRejected
from cxr.data.parts import PartImage, PartResult, PartSpec, check_one, decode_one, process_part
from cxr.data.tar_scan import ArchiveResult, scan_on_worker, unfinished_chunk

log = logging.getLogger(__name__)


class DecodeCrashError(RuntimeError):
    """A part's worker died again after the images that kill their workers were set aside."""


def worker_died(future: Any) -> bool:
    """Whether a finished Dask future failed because every worker that ran it died."""
    return future.status == "error" and isinstance(future.exception(), KilledWorker)


def isolate_crashes(client: Any, spec: PartSpec) -> PartResult:
    """Decode ``spec`` image by image to find the images that kill their worker, then write the part without them."""
    log.warning("the workers decoding part %s died; decoding its %d images one by one", spec.key, len(spec.images))
    crashed: dict[str, str] = {}
    for index, image in enumerate(spec.images):
        future = client.submit(
            check_one, image, spec.limits, spec.sizes, key=f"check_one-{spec.key}-{index}", pure=False
        )
        try:
            future.result()
        except KilledWorker as err:
            crashed[image.image_id] = _crash_detail(err)
            log.warning("%s kills the worker that decodes it: quarantined as decode_crashed", image.url)
    final = client.submit(process_part, spec, crashed, key=f"process_part-{spec.key}-isolated", pure=False)
    try:
        return final.result()
    except KilledWorker as err:
        raise DecodeCrashError(
            f"part {spec.work_dir}: a worker died again while decoding it without {sorted(crashed) or 'any image'}"
        ) from err


def check_bytes(image: PartImage, content: bytes, limits: DecodeLimits, sizes: tuple[int, ...]) -> str | None:
    """Decode one image from its bytes and keep nothing: its reason, or None."""
    try:
        decode_one(image, limits, sizes, content)
    except ImageRejected as rejected:
        return str(rejected.reason)
    return None


def _crash_detail(err: KilledWorker) -> str:
    return (
        f"its worker died in its part and {err.allowed_failures + 1} times decoding it alone "
        "(KilledWorker): a crash in the decoder, or more memory than a worker may use"
    )


MAX_ARCHIVE_ROUNDS = 8  # scans of one archive tried again after isolating the images that killed the one before


def isolate_archive_crashes(client: Any, spec: ArchiveSpec, token: str) -> ArchiveResult:
    """Scan ``spec`` again and again, each time without the images that killed the scan before (module docstring)."""
    crashed: dict[str, str] = {}
    for attempt in range(MAX_ARCHIVE_ROUNDS):
        log.warning("the workers reading %s died; decoding its first unfinished chunk image by image", spec.url)
        chunk = client.submit(unfinished_chunk, spec, key=f"unfinished_chunk-{spec.key}-{attempt}", pure=False)
        found = 0
        for index, (image, content) in enumerate(chunk.result()):
            if image.image_id in crashed:
                continue
            key = f"check_bytes-{spec.key}-{attempt}-{index}"
            future = client.submit(check_bytes, image, content, spec.limits, spec.sizes, key=key, pure=False)
            try:
                future.result()
            except KilledWorker as err:
                crashed[image.image_id] = _crash_detail(err)
                found += 1
                log.warning("%s kills the worker that decodes it: quarantined as decode_crashed", image.url)
        scan = client.submit(scan_on_worker, spec, token, crashed, key=f"scan_archive-{spec.key}-{attempt}", pure=False)
        try:
            return scan.result()
        except KilledWorker as err:
            if not found:
                raise DecodeCrashError(
                    f"{spec.url}: a worker died again reading it, and no image of its first unfinished chunk kills "
                    "a worker alone (killed from outside?)"
                ) from err
    raise DecodeCrashError(f"{spec.url}: its workers kept dying after {MAX_ARCHIVE_ROUNDS} rounds of isolation")
