"""The one table (``finding_map.csv``, beside this module) from each source format's labels to the 14 findings.

A row ``format,label,finding`` says that the format's ``label`` is the project's ``finding``; an empty
finding says the label is read and not used (it is none of the 14). A finding no label of a format maps
to is *unlabelled* by that format: missing, not negative. Its column is null in every row of such a
source, it is left out of that finding's frequencies and weights, and masked out of the loss and the
metrics. ``cxr inspect`` prints the table (:func:`mapping_text`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources

from cxr.findings import FINDINGS


@dataclass(frozen=True)
class FindingMap:
    """One source format's labels: which of the 14 findings each is, and which findings it never labels."""

    source_format: str
    labels: tuple[tuple[str, str | None], ...]  # (source label, finding or None), in the table's order

    @property
    def to_finding(self) -> dict[str, str | None]:
        return dict(self.labels)

    @property
    def labelled(self) -> tuple[str, ...]:
        """The findings this format labels, in the NIH order."""
        mapped = {f for _, f in self.labels if f}
        return tuple(f for f in FINDINGS if f in mapped)

    @property
    def unlabelled(self) -> tuple[str, ...]:
        """The findings this format never labels: null in its rows."""
        return tuple(f for f in FINDINGS if f not in self.labelled)


@cache
def _table() -> dict[str, FindingMap]:
    text = resources.files("cxr.data").joinpath("finding_map.csv").read_text(encoding="utf-8")
    rows: dict[str, list[tuple[str, str | None]]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        finding = row["finding"] or None
        if finding is not None and finding not in FINDINGS:
            raise ValueError(f"finding_map.csv: {finding!r} is not one of the 14 findings")
        rows.setdefault(row["source_format"], []).append((row["source_label"], finding))
    return {name: FindingMap(name, tuple(labels)) for name, labels in rows.items()}


def finding_map(source_format: str) -> FindingMap:
    """The mapping of ``source_format`` (``nih``, ``chexpert``); a clear error for an unknown one."""
    table = _table()
    if source_format not in table:
        raise ValueError(f"no finding map for source format {source_format!r}; known: {', '.join(sorted(table))}")
    return table[source_format]


def mapping_text(source_format: str) -> str:
    """The mapping as a person reads it: each label and its finding, then the findings left unlabelled."""
    fmap = finding_map(source_format)
    width = max(len(label) for label, _ in fmap.labels)
    lines = [f"{source_format} labels -> the 14 findings:"]
    lines += [f"  {label:<{width}}  ->  {finding or '(not used)'}" for label, finding in fmap.labels]
    missing = ", ".join(fmap.unlabelled) or "none"
    lines.append(f"  unlabelled (missing, not negative): {missing}")
    return "\n".join(lines)
