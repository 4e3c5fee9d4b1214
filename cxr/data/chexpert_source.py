"""A source in the CheXpert / MIMIC-CXR-JPG layout: ``train.csv`` and ``valid.csv`` beside the image folders.

Tables: ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and the 14 CheXpert observations (``No Finding`` ...
``Support Devices``), each 1.0 / 0.0 / -1.0 / blank; which of the 14 findings each observation is comes
from ``finding_map.csv`` (:mod:`cxr.data.finding_map`), what -1.0 and blank become from the label policy
(:mod:`cxr.data.label_policy`). Either table may be missing, not both.

Rules, per row:

- ``Path`` names the image under the source root. Its first component is the release's folder
  (``CheXpert-v1.0-small/train/...``) and is dropped when the root has no folder of that name. The image
  id is the path left (``train/patient00001/study1/view1_frontal.jpg``); a path that would leave the
  root is ``unsafe_path``.
- The patient is the number in the path's ``patientNNNNN`` (CheXpert) or ``pNNNNNNNN`` (MIMIC) folder;
  the follow-up the number of its ``studyN`` folder (0 without one).
- ``Sex``: Male -> M, Female -> F, anything else (``Unknown``) -> U. ``Age``: years, 0 to 120.
- ``view``: the ``AP/PA`` value (AP, PA, LL, RL) where given, else ``FRONTAL`` or ``LATERAL``.
- Splits: the rows of ``valid.csv`` (the release's labelled hold-out) are the test split; those of
  ``train.csv`` are split into train and validation by patient. The tables themselves are the inputs:
  the split lists add none.
- Images: ``.jpg``, ``.jpeg`` and ``.png`` files anywhere in the root's folders; a file no row names is
  ``unlabeled_image``.
"""

from __future__ import annotations

import posixpath
import re

from cxr import storage
from cxr.data.csv_text import RowError, SourceFormatError, decode_lines, parse_int, read_header, relative_path
from cxr.data.finding_map import finding_map
from cxr.data.label_policy import LabelPolicy, parse_value
from cxr.data.label_rows import MAX_AGE, LabelTable, RowReader
from cxr.data.labels import SplitList
from cxr.data.quarantine import Reason
from cxr.data.source import SourceLayout, SourceTables

FORMAT = "chexpert"
TABLE_NAMES = ("train.csv", "valid.csv")
TEST_TABLE = "valid.csv"
FIELDS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
NO_FINDING = "No Finding"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_PATIENT = re.compile(r"(?:patient|p)(\d{1,17})")
_STUDY = re.compile(r"study(\d{1,9})")
_SEX = {"Male": "M", "Female": "F"}


def is_chexpert(names: set[str]) -> bool:
    """Whether a folder's file names include a table of this layout."""
    return any(n in names for n in TABLE_NAMES)


def discover(root: str) -> SourceLayout:
    """The tables and image files of a CheXpert-layout source at ``root``."""
    present = {posixpath.basename(p) for p in storage.list_files(root)}
    tables = [storage.join(root, n) for n in TABLE_NAMES if n in present]
    if not tables:
        raise SourceFormatError(f"{root}: no CheXpert-format table; expected {' or '.join(TABLE_NAMES)}")
    images: dict[str, str] = {}
    details: dict[str, dict] = {}
    for folder in storage.list_dirs(root):
        name = posixpath.basename(folder.rstrip("/"))
        for entry in storage.list_files_detail(folder, recursive=True):
            if entry["url"].lower().endswith(IMAGE_SUFFIXES):
                images[name + entry["url"][len(folder.rstrip("/")) :]] = entry["url"]
                details[entry["url"]] = entry
    train = storage.join(root, "train.csv") if "train.csv" in present else None
    test = storage.join(root, TEST_TABLE) if TEST_TABLE in present else None
    return SourceLayout(
        root=root,
        label_table=tables[0],
        box_list=None,
        train_val_list=train,
        test_list=test,
        image_files=images,
        tables=tuple(tables),
        file_details=details,
    )


def _image_id(path: str, folders: set[str]) -> str:
    parts = relative_path(path).split("/")
    if len(parts) > 1 and parts[0] not in folders:
        parts = parts[1:]
    return "/".join(parts)


def _patient(image_id: str) -> tuple[int, int]:
    folders = image_id.split("/")[:-1]
    patient = next((m for f in folders if (m := _PATIENT.fullmatch(f))), None)
    if patient is None:
        raise RowError(Reason.BAD_ROW, f"Path {image_id!r} names no patientNNNNN (or pNNNNNNNN) folder")
    study = next((m for f in folders if (m := _STUDY.fullmatch(f))), None)
    return int(patient.group(1)), int(study.group(1)) if study else 0


def _view(frontal: str, ap_pa: str) -> str:
    if ap_pa.strip():
        return ap_pa.strip().upper()
    side = frontal.strip().upper()
    if side not in ("FRONTAL", "LATERAL"):
        raise RowError(Reason.BAD_ROW, f"Frontal/Lateral {frontal!r} is not Frontal or Lateral")
    return side


def read_tables(layout: SourceLayout, policy: LabelPolicy) -> LabelTable:
    """Every row of the layout's tables, read by the rules in the module docstring."""
    folders = {posixpath.basename(d.rstrip("/")) for d in storage.list_dirs(layout.root)}
    observations = finding_map(FORMAT).labels
    wanted = (*FIELDS, NO_FINDING, *(label for label, _ in observations))
    reader = RowReader()
    for table in layout.tables:
        lines = decode_lines(layout.read(table), table)
        header = [h.strip() for h in read_header(lines, table)]
        missing = [w for w in wanted if w not in header]
        if missing:
            raise SourceFormatError(f"{table}: missing column(s) {', '.join(map(repr, missing))}")
        pos = {name: header.index(name) for name in wanted}

        def parse(image_id: str, fields: list[str], pos: dict[str, int] = pos) -> tuple[dict, dict]:
            patient, study = _patient(image_id)
            no_finding = parse_value(NO_FINDING, fields[pos[NO_FINDING]]) == 1.0
            labels: dict[str, bool | None] = {}
            for label, finding in observations:
                value = parse_value(label, fields[pos[label]])
                if finding is not None:
                    labels[finding] = policy.label(value, no_finding)
                    if no_finding and value == 1.0:
                        raise RowError(Reason.BAD_ROW, f"{NO_FINDING} 1.0 together with {label} 1.0")
            row = {
                "image_id": image_id,
                "patient_id": patient,
                "follow_up": study,
                "age": parse_int("Age", fields[pos["Age"]], 0, MAX_AGE),
                "sex": _SEX.get(fields[pos["Sex"]].strip(), "U"),
                "view": _view(fields[pos["Frontal/Lateral"]], fields[pos["AP/PA"]]),
                "source_format": FORMAT,
            }
            return row, labels

        reader.read(table, lines, len(header), lambda f, p=pos["Path"]: _image_id(f[p], folders), parse)
    return reader.table(FORMAT)


def read_chexpert(root: str, policy: LabelPolicy) -> SourceTables:
    """Discover a CheXpert-layout source and read its tables; the splits come from which table a row is in."""
    layout = discover(root)
    labels = read_tables(layout, policy)
    ids = labels.rows["image_id"].to_pylist()
    bounds = [*labels.table_starts, len(ids)]

    def listed(table: str | None) -> SplitList | None:
        if table is None:
            return None
        k = layout.tables.index(table)
        return SplitList(ids[bounds[k] : bounds[k + 1]])

    return SourceTables(layout, labels, None, listed(layout.train_val_list), listed(layout.test_list))
