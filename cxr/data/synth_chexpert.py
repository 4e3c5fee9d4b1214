"""``cxr synth --format chexpert``: the synthetic images and labels of :mod:`cxr.data.synth` in the CheXpert layout.

The rows (patients, follow-ups, NIH label sets) and the pixels are those of the NIH-format synth with the
same settings; only the files differ. Images are JPEGs at
``CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyK/view1_frontal.jpg`` (``valid``: the patients the
NIH-format synth puts in its test list), labels go into ``train.csv`` and ``valid.csv`` with the 14
CheXpert observations, drawn from the true findings as a report labeller would write them (seeded):

- a finding the image shows: 1.0, or -1.0 (uncertain) with probability ``UNCERTAIN_POSITIVE``;
- a finding it does not show: 0.0 with probability ``STATED_NEGATIVE``, -1.0 with ``UNCERTAIN_NEGATIVE``,
  else blank (not mentioned);
- ``No Finding`` 1.0 when it shows none; ``Lung Opacity`` 1.0 with any opacity (Infiltration,
  Consolidation, Pneumonia, Edema, Atelectasis, Mass, Nodule), ``Lung Lesion`` with Mass or Nodule,
  ``Pleural Other`` with Pleural_Thickening; ``Support Devices`` 1.0 for ``DEVICES`` of the images;
  otherwise blank.

There are no boxes: the CheXpert release has none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxr.data.chexpert_source import NO_FINDING
from cxr.data.finding_map import finding_map

RELEASE = "CheXpert-v1.0-small"
HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
UNCERTAIN_POSITIVE = 0.15
STATED_NEGATIVE = 0.3
UNCERTAIN_NEGATIVE = 0.05
DEVICES = 0.2
_DERIVED = {
    "Lung Opacity": {"Infiltration", "Consolidation", "Pneumonia", "Edema", "Atelectasis", "Mass", "Nodule"},
    "Lung Lesion": {"Mass", "Nodule"},
    "Pleural Other": {"Pleural_Thickening"},
}
_SEX = {"M": "Male", "F": "Female"}


def image_path(row: dict[str, Any], test: bool) -> str:
    """Where a row's image goes, relative to the output (also its ``Path`` without the release folder)."""
    split = "valid" if test else "train"
    return f"{split}/patient{row['patient_id']:05d}/study{row['follow_up'] + 1}/view1_frontal.jpg"


def _value(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}"


def observations(findings: set[str], rng: np.random.Generator) -> dict[str, float | None]:
    """A row's CheXpert observation values from the findings its image shows (the module docstring's rules)."""
    values: dict[str, float | None] = {NO_FINDING: None if findings else 1.0}
    for label, finding in finding_map("chexpert").labels:
        draw = rng.random()
        if finding is not None:
            if finding in findings:
                values[label] = -1.0 if draw < UNCERTAIN_POSITIVE else 1.0
            elif draw < STATED_NEGATIVE:
                values[label] = 0.0
            elif draw < STATED_NEGATIVE + UNCERTAIN_NEGATIVE and findings:
                values[label] = -1.0
            else:
                values[label] = None
        elif label in _DERIVED:
            values[label] = 1.0 if findings & _DERIVED[label] else None
        elif label == "Support Devices":
            values[label] = 1.0 if draw < DEVICES else None
        else:
            values[label] = None
    return values


def tables(rows: list[dict[str, Any]], test_patients: set[int], seed: int) -> dict[str, str]:
    """``train.csv`` and ``valid.csv`` for the rows (``valid``: the test patients' rows)."""
    labels = [label for label, _ in finding_map("chexpert").labels]
    header = ",".join((*HEADER, NO_FINDING, *labels))
    out = {"train.csv": [header], "valid.csv": [header]}
    for index, r in enumerate(rows):
        rng = np.random.default_rng([seed, 2, index])
        findings = set() if r["labels"] == "No Finding" else set(r["labels"].split("|"))
        values = observations(findings, rng)
        test = r["patient_id"] in test_patients
        fields = (f"{RELEASE}/{image_path(r, test)}", _SEX[r["sex"]], str(r["age"]), "Frontal", r["view"])
        cells = (*fields, _value(values[NO_FINDING]), *(_value(values[label]) for label in labels))
        out["valid.csv" if test else "train.csv"].append(",".join(cells))
    return {name: "\n".join(lines) + "\n" for name, lines in out.items()}
