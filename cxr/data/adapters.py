"""Source adapters: how each source format's images are found, its tables read, and its labels mapped.

An adapter is small and explicit: a name and a version (both recorded in ``dataset.json`` and the
lineage; the version goes up when its reading rules change), the image encodings its sources hold,
how to recognise its layout, and the reader that turns a source into :class:`SourceTables`, the common
form ingest works from. Every format's rows have the same columns (:mod:`cxr.data.label_rows`), with
``source_format`` naming the adapter; how its labels map to the 14 findings is in ``finding_map.csv``.

=========  =========================================================  ============
format     layout                                                     images
=========  =========================================================  ============
nih        ``Data_Entry_2017*.csv`` (+ boxes, split lists), images/    PNG
chexpert   ``train.csv`` / ``valid.csv`` (CheXpert, MIMIC-CXR-JPG)     JPEG, PNG
dicom      ``labels.csv`` beside ``*.dcm`` files                      DICOM
=========  =========================================================  ============
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, replace

from cxr import storage
from cxr.data.chexpert_source import is_chexpert, read_chexpert
from cxr.data.csv_text import SourceFormatError
from cxr.data.decode import DecodeLimits
from cxr.data.dicom_source import LABELS as DICOM_LABELS
from cxr.data.dicom_source import read_dicom
from cxr.data.label_policy import LabelPolicy
from cxr.data.source import LABEL_TABLE_NAMES, SourceTables, read_nih


@dataclass(frozen=True)
class Adapter:
    name: str
    version: int  # up by one whenever what this adapter reads from the same files changes
    formats: tuple[str, ...]  # image encodings (cxr.data.decode.DecodeLimits.formats)
    layout: str  # what a person must have, for error messages
    read: Callable[[str, LabelPolicy, DecodeLimits], SourceTables]


def _read_nih(root: str, policy: LabelPolicy, limits: DecodeLimits) -> SourceTables:
    return read_nih(root)  # NIH labels are yes or no: the policy has nothing to decide


def _read_chexpert(root: str, policy: LabelPolicy, limits: DecodeLimits) -> SourceTables:
    return read_chexpert(root, policy)


ADAPTERS: dict[str, Adapter] = {
    "nih": Adapter("nih", 1, ("png",), f"{' or '.join(LABEL_TABLE_NAMES[::2])} beside images/", _read_nih),
    "chexpert": Adapter(
        "chexpert", 1, ("jpeg", "png"), "train.csv or valid.csv beside the image folders", _read_chexpert
    ),
    "dicom": Adapter("dicom", 1, ("dicom",), "labels.csv beside .dcm files (any folders below)", read_dicom),
}
SOURCE_FORMATS: tuple[str, ...] = tuple(ADAPTERS)


def adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        raise ValueError(f"unknown source format {name!r}; expected one of {', '.join(SOURCE_FORMATS)}")
    return ADAPTERS[name]


def detect_format(root: str) -> str:
    """The format of the source at ``root``: a ``.zip`` or an NIH label table is ``nih``; a CheXpert table is
    ``chexpert``."""
    root = root.rstrip("/") if storage.is_remote(root) else root
    if storage.is_file(root):
        return "nih"  # a .zip of the NIH release; anything else is refused by its reader, saying why
    names = {posixpath.basename(p) for p in storage.list_files(root)}
    if any(n in names for n in LABEL_TABLE_NAMES) or any(n.startswith("images_") for n in names):
        return "nih"
    if is_chexpert(names):
        return "chexpert"
    if DICOM_LABELS in names:  # a DICOM source's label table
        return "dicom"
    if not storage.exists(root):
        raise FileNotFoundError(f"source {root!r} does not exist")
    layouts = "; ".join(f"{a.name}: {a.layout}" for a in ADAPTERS.values())
    raise SourceFormatError(f"{root}: no label table of a known source format ({layouts})")


def read_source(
    root: str, policy: LabelPolicy | None = None, source_format: str | None = None, limits: DecodeLimits | None = None
) -> SourceTables:
    """Read the source at ``root`` with its format's adapter (``source_format``; None: recognised from its files)."""
    reader = adapter(source_format or detect_format(root))
    limits = replace(limits or DecodeLimits(), formats=reader.formats)
    return reader.read(root, policy or LabelPolicy(), limits)
