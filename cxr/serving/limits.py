"""How much one request may send: the body's bytes and a batch's images; the defaults live here only.

The pixel limits are decoding's own (:data:`cxr.data.source_image.ANY_FORMAT`: at most 8192 x 8192
pixels claimed, and a memory budget per image checked from the header before any pixel is decoded), the
same ``cxr predict`` and ingest apply. The body limit comes first (:mod:`cxr.serving.body`). Light to
import: ``cxr serve``'s options take their defaults from here when ``cxr`` starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxr.data.source_image import ANY_FORMAT
from cxr.learn.config import PREDICT_BATCH

# The largest image file decoding accepts (64 MiB): a single upload larger than that could only be refused.
DEFAULT_MAX_BODY = ANY_FORMAT.max_bytes
# Four of `cxr predict`'s passes (16 images) in one: 64 NIH PNGs (about 0.5 MB each, 0.7 MB in base64) make a
# 45 MB body, under DEFAULT_MAX_BODY; their gray pixels at 1024 px hold 64 MiB while the batch is scored.
DEFAULT_MAX_BATCH = 4 * PREDICT_BATCH


@dataclass(frozen=True)
class ServeLimits:
    """What one request may send: ``max_body`` bytes, ``max_batch`` images in a batch."""

    max_body: int = DEFAULT_MAX_BODY
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        if self.max_body < 1:
            raise ValueError(f"--max-body must be at least 1 byte, got {self.max_body}")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1 image, got {self.max_batch}")

    def described(self) -> dict[str, Any]:
        """The limits as ``GET /health`` states them, decoding's included."""
        return {
            "max_body_bytes": self.max_body,
            "max_batch_images": self.max_batch,
            "max_image_bytes": ANY_FORMAT.max_bytes,
            "max_pixels": ANY_FORMAT.max_pixels,
            "min_side_px": ANY_FORMAT.min_side,
            "decode_memory_bytes": ANY_FORMAT.max_image_bytes,
            "formats": list(ANY_FORMAT.formats),
        }
