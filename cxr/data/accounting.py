"""What became of every input of an ingest: the counts that must add up, as a typed record.

``inputs = label rows + files no row names = accepted + quarantined``; box-list rows and split-list
lines are accounted for the same way. The record is written into ``dataset.json`` and read back from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class BoxAccounting:
    inputs: int  # rows of the box list
    accepted: int
    quarantined: int


@dataclass(frozen=True)
class SplitListAccounting:
    inputs: int  # lines of train_val_list.txt and test_list.txt
    quarantined: int


@dataclass(frozen=True)
class Accounting:
    """Every input of one ingest, accepted or quarantined (with reasons)."""

    label_rows: int
    image_files: int
    inputs: int  # label rows + image files that no row names
    accepted: int
    quarantined: int
    quarantined_by_reason: Mapping[str, int]  # most frequent first
    boxes: BoxAccounting
    split_lists: SplitListAccounting

    def check(self) -> Accounting:
        """Raise if the counts do not add up (that would be a bug in ingest, never bad input)."""
        if (
            self.accepted + self.quarantined != self.inputs
            or self.boxes.accepted + self.boxes.quarantined != self.boxes.inputs
        ):
            raise RuntimeError(f"ingest accounting does not add up (a bug): {self}")
        return self
