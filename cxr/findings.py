"""The 14 ChestX-ray14 findings, their column names, and how the label strings map to them.

Source: Wang et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
Weakly-Supervised Classification and Localization of Common Thorax Diseases", CVPR 2017.
"""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
"""The findings in the order of the NIH release; model outputs follow this order."""

NO_FINDING = "No Finding"

# The box list writes "Infiltrate" where the label table writes "Infiltration".
BOX_LABEL_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}


def column_name(finding: str) -> str:
    """The metadata column of a finding: snake_case, e.g. ``Pleural_Thickening`` -> ``pleural_thickening``."""
    if finding not in FINDINGS:
        raise ValueError(f"unknown finding {finding!r}; expected one of {', '.join(FINDINGS)}")
    return finding.lower()


FINDING_COLUMNS: tuple[str, ...] = tuple(f.lower() for f in FINDINGS)


def parse_finding(name: str) -> str:
    """Return the canonical finding for a user-given name, accepting any case and snake_case.

    Meant for command-line options (``--target pneumonia``); data files are matched exactly instead.
    """
    key = name.strip().lower().replace(" ", "_")
    for finding in FINDINGS:
        if finding.lower() == key:
            return finding
    raise ValueError(f"unknown finding {name!r}; expected one of {', '.join(FINDINGS)}")
