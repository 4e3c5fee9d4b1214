"""Small NIH-layout archives for the dataset store's tests: made by the synthesizer, grown by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

from cxr.data.synth import SynthConfig, synthesize

LABELS = "Data_Entry_2017_v2020.csv"


def archive(out: Path, n_images: int, seed: int = 0, size: int = 64) -> Path:
    """A synthetic archive of ``n_images`` PNGs (``size`` px) in the NIH layout."""
    synthesize(SynthConfig(out=str(out), n_images=n_images, size=size, seed=seed, workers=1))
    return out


def grow(src: Path, n: int, start: int = 900) -> list[str]:
    """Add ``n`` follow-up images of existing patients (copies of their first image) and their label rows."""
    table = src / LABELS
    lines = table.read_text().splitlines()
    added, new_rows = [], []
    for k, row in enumerate(lines[1 : n + 1]):
        fields = row.split(",")
        image_id = fields[0]
        new_id = f"{image_id[:8]}_{start + k:03d}.png"
        shutil.copy(next(src.rglob(image_id)), next(src.rglob(image_id)).parent / new_id)
        fields[0], fields[2] = new_id, str(start + k)
        new_rows.append(",".join(fields))
        added.append(new_id)
    table.write_text("\n".join([*lines, *new_rows]) + "\n")
    return added
