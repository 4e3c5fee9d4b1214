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


def pack_targz(src: Path, dst: Path, n_archives: int) -> list[Path]:
    """``src``'s images as ``n_archives`` ``images_NNN.tar.gz`` files in ``dst`` (members ``images/<id>``, in id
    order, as NIH publishes them), with its tables copied beside them."""
    import tarfile

    dst.mkdir(parents=True, exist_ok=True)
    images = sorted(src.rglob("images/*.png"), key=lambda p: p.name)
    per = -(-len(images) // n_archives)
    archives = []
    for k in range(n_archives):
        path = dst / f"images_{k + 1:03d}.tar.gz"
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            for image in images[k * per : (k + 1) * per]:
                tar.add(image, arcname=f"images/{image.name}")
        archives.append(path)
    for table in src.iterdir():
        if table.is_file():
            shutil.copy(table, dst / table.name)
    return archives


def pack_zip(src: Path, dst: Path) -> Path:
    """``src`` (tables and ``images_NNN/images/``) as one zip, the layout of the mirrors' single download."""
    import zipfile

    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(src).as_posix())
    return dst
