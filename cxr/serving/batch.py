"""The body of ``POST /predict/batch``: ``{"images": [{"name": "...", "data": "<base64>"}, ...]}``.

The shape is checked whole before any image is decoded: a body that is not that JSON, an entry without
base64 ``data``, or more images than ``--max-batch`` is refused as a whole (400, 413), naming the entry.
An image whose bytes decode to no usable image is not a malformed batch: it gets its own error entry
among the results (:mod:`cxr.serving.scoring`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cxr.serving.errors import Problem

SHAPE = '{"images": [{"name": "...", "data": "<base64 of the image file>"}, ...]}'


@dataclass(frozen=True)
class Upload:
    """One image of a batch: its name (``upload-K`` when none is given) and its file's bytes."""

    name: str
    data: bytes


def parse_batch(body: bytes, max_batch: int) -> list[Upload]:
    """The images of a batch body, in order; :class:`Problem` (400, or 413 for too many) naming what is wrong."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as err:
        raise Problem(400, f"the body is not JSON ({err}): send {SHAPE}") from None
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        raise Problem(400, f"the body has no list under 'images': send {SHAPE}")
    if not images:
        raise Problem(400, f"the batch holds no image: send {SHAPE}")
    if len(images) > max_batch:
        raise Problem(
            413, f"the batch holds {len(images)} images, more than the {max_batch} this server takes (--max-batch)"
        )
    uploads = []
    for k, entry in enumerate(images):
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), str):
            raise Problem(400, f"images[{k}] has no base64 string under 'data': send {SHAPE}")
        name = entry.get("name", f"upload-{k}")
        if not isinstance(name, str):
            raise Problem(400, f"images[{k}]: 'name' must be a string, got {json.dumps(name)}")
        try:
            data = base64.b64decode(entry["data"], validate=True)
        except (binascii.Error, ValueError) as err:
            raise Problem(400, f"images[{k}] ({name}): 'data' is not base64 ({err})") from None
        uploads.append(Upload(name, data))
    return uploads
