"""A part whose Dask worker died: find the image that kills its worker, quarantine it, land the rest.

A crash in the decoder, or an image whose decoding takes more memory than the worker's limit
(cxr/data/cluster.py), kills the worker process. Dask tries the task on other workers
(``ALLOWED_FAILURES`` more times), then reports ``KilledWorker``. Such a part is then decoded again one
image at a time, each image its own Dask task and only one running, so that a death can only be that
image's; each gets the same bounded retries. An image whose task Dask reports ``KilledWorker`` is
quarantined as ``decode_crashed``, and the part is decoded once more without it. A worker that died for
another reason (killed from outside) quarantines nothing: every image then passes on its own.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed import KilledWorker

from cxr.data.parts import PartResult, PartSpec, check_one, process_part

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
            crashed[image.image_id] = (
                f"its worker died in its part and {err.allowed_failures + 1} times decoding it alone "
                "(KilledWorker): a crash in the decoder, or more memory than a worker may use"
            )
            log.warning("%s kills the worker that decodes it: quarantined as decode_crashed", image.url)
    final = client.submit(process_part, spec, crashed, key=f"process_part-{spec.key}-isolated", pure=False)
    try:
        return final.result()
    except KilledWorker as err:
        raise DecodeCrashError(
            f"part {spec.work_dir}: a worker died again while decoding it without {sorted(crashed) or 'any image'}"
        ) from err
