"""How a source's 1.0 / 0.0 / -1.0 / blank label values become a finding's label: true, false or missing.

CheXpert and MIMIC-CXR-JPG label each observation 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or
leave it blank (not mentioned in the report). The policy decides the last two explicitly:

- ``uncertain``: ``ones`` (U-Ones: positive), ``zeros`` (U-Zeros: negative) or ``ignore`` (U-Ignore:
  missing), after Irvin et al., "CheXpert", AAAI 2019.
- ``blank``: ``ignore`` (missing: not mentioned is not known) or ``zeros`` (negative, as the CheXpert
  paper trains).

Defaults: both ``ignore``, so nothing is counted as negative that the report did not say. One rule holds
under every policy: in a row whose "No Finding" is 1.0 the labeller found no pathology, so its blank
findings are negative. Missing labels are null in the metadata: out of the frequencies, the weights,
the loss and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cxr.data.csv_text import RowError
from cxr.data.quarantine import Reason

Uncertain = Literal["ones", "zeros", "ignore"]
Blank = Literal["ignore", "zeros"]
UNCERTAIN_POLICIES: tuple[str, ...] = ("ones", "zeros", "ignore")
BLANK_POLICIES: tuple[str, ...] = ("ignore", "zeros")

_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": None}


@dataclass(frozen=True)
class LabelPolicy:
    """What uncertain (-1.0) and blank labels become."""

    uncertain: Uncertain = "ignore"
    blank: Blank = "ignore"

    def __post_init__(self) -> None:
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain policy must be one of {', '.join(UNCERTAIN_POLICIES)}, got {self.uncertain!r}")
        if self.blank not in BLANK_POLICIES:
            raise ValueError(f"blank policy must be one of {', '.join(BLANK_POLICIES)}, got {self.blank!r}")

    def label(self, value: float | None, no_finding: bool = False) -> bool | None:
        """A parsed value (:func:`parse_value`) as a label: True, False, or None (missing)."""
        if value is None:
            return False if no_finding or self.blank == "zeros" else None
        if value == -1.0:
            return {"ones": True, "zeros": False, "ignore": None}[self.uncertain]
        return value == 1.0


def parse_value(column: str, text: str) -> float | None:
    """``1.0``, ``0.0``, ``-1.0`` (or ``1``, ``0``, ``-1``), or blank (None); anything else is a bad row."""
    key = text.strip()
    if key not in _VALUES:
        raise RowError(Reason.BAD_ROW, f"{column} {text!r} is not 1.0, 0.0, -1.0 or blank")
    return _VALUES[key]
