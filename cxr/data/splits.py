"""Patient-wise splits: the official lists when present, else a deterministic hash of ``patient_id``.

No patient is ever in two splits. With the official lists, ``test_list.txt`` gives ``test`` and
``train_val_list.txt`` gives train/val; images in neither follow their patient's other images, or the
hash when the patient is listed nowhere. Validation is carved out of train/val by the same patient hash,
so a patient's split never changes as the archive grows (retraining compares like with like).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The splits, in the order every table and report lists them."""
TEST_SHARE = 0.2  # patients to test when no official list names them (NIH's own list holds 23 %)
VAL_SHARE = 0.1  # patients to validation, of all (see assign_splits): ~10k NIH images, enough for per-finding AUROC


class SplitConflictError(ValueError):
    """The official lists would put one patient, or one image, in two splits."""


def patient_unit(patient_ids: Sequence[int], salt: str = "test") -> np.ndarray:
    """A uniform number in [0, 1) per patient, from sha256 of (salt, id): stable across runs and machines."""
    out = np.empty(len(patient_ids), dtype=np.float64)
    for i, pid in enumerate(patient_ids):
        digest = hashlib.sha256(f"cxr-split:{salt}:{int(pid)}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2**64
    return out


def assign_splits(
    image_ids: Sequence[str],
    patient_ids: Sequence[int],
    train_val_list: Sequence[str] | None = None,
    test_list: Sequence[str] | None = None,
    test_share: float = TEST_SHARE,
    val_share: float = VAL_SHARE,
) -> pa.Array:
    """The split of each image (``train``/``val``/``test``), aligned with ``image_ids``.

    ``test_share`` decides for patients that no official list names (all of them, without lists).
    Validation takes the train/val patients whose hash is below ``val_share / (1 - test_share)``: without
    lists, ``val_share`` of all patients. With lists the same cut applies to the listed train/val patients,
    so there a ``test_share`` other than the default also moves validation's share (0.8 makes it half of
    train/val); the cut is kept as it is because changing it would move patients between splits of
    versions already made.
    """
    if not (0 <= test_share < 1 and 0 <= val_share < 1 and test_share + val_share < 1):
        raise ValueError(f"test_share {test_share} and val_share {val_share} must be in [0, 1) with a sum below 1")
    unique = sorted({int(p) for p in patient_ids})
    official = train_val_list is not None or test_list is not None
    test_set = set(test_list or ())
    train_val_set = set(train_val_list or ())
    both = test_set & train_val_set
    if both:
        example = sorted(both)[0]
        raise SplitConflictError(
            f"{len(both)} image(s) are in both test_list.txt and train_val_list.txt, e.g. {example}"
        )

    patient_split: dict[int, str] = {}
    if official:
        for image_id, pid in zip(image_ids, patient_ids, strict=True):
            listed = "test" if image_id in test_set else "train_val" if image_id in train_val_set else None
            if listed is None:
                continue
            seen = patient_split.setdefault(int(pid), listed)
            if seen != listed:
                raise SplitConflictError(
                    f"patient {pid} would be in two splits: {image_id} is listed for {listed}, "
                    f"another of the patient's images for {seen}"
                )
    # Unlisted patients (or all, without lists): test by one hash, val by another, so they are independent.
    test_u = dict(zip(unique, patient_unit(unique, "test"), strict=True))
    val_u = dict(zip(unique, patient_unit(unique, "val"), strict=True))
    val_cut = val_share / (1.0 - test_share)
    result = []
    for pid in patient_ids:
        group = patient_split.get(int(pid)) or ("test" if test_u[int(pid)] < test_share else "train_val")
        if group == "test":
            result.append("test")
        else:
            result.append("val" if val_u[int(pid)] < val_cut else "train")
    return pa.array(result, pa.string())
