"""Derive cxr/data/nih_profile.json from the real NIH v2020 label table (run once; the JSON is committed).

    .venv/bin/python scripts/make_nih_profile.py ../shared/data/nih/Data_Entry_2017_v2020.csv.gz

The profile holds only aggregate counts (label-set frequencies, which carry the prevalence and the
co-occurrence of the findings; views, sexes, ages, images per patient, original sizes), no rows.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc

from cxr.data.labels import read_label_table
from cxr.findings import NO_FINDING


def main(path: str) -> None:
    table = read_label_table(Path(path).read_bytes(), path)
    if table.quarantine:
        raise SystemExit(f"{len(table.quarantine)} rows quarantined; expected a clean table")
    rows = table.rows
    label_sets = Counter("|".join(labels) or NO_FINDING for labels in rows["finding_labels"].to_pylist())
    per_patient = Counter(Counter(rows["patient_id"].to_pylist()).values())
    sizes = Counter(
        zip(
            rows["orig_width"].to_pylist(),
            rows["orig_height"].to_pylist(),
            rows["pixel_spacing_x"].to_pylist(),
            strict=True,
        )
    )
    profile = {
        "source": "NIH ChestX-ray14 Data_Entry_2017_v2020.csv (Wang et al., CVPR 2017), aggregate counts only",
        "n_images": rows.num_rows,
        "n_patients": len(pc.unique(rows["patient_id"])),
        "label_sets": sorted(([k, v] for k, v in label_sets.items()), key=lambda kv: (-kv[1], kv[0])),
        "views": dict(Counter(rows["view"].to_pylist()).most_common()),
        "sexes": dict(Counter(rows["sex"].to_pylist()).most_common()),
        "ages": {str(k): v for k, v in sorted(Counter(rows["age"].to_pylist()).items())},
        "images_per_patient": {str(k): v for k, v in sorted(per_patient.items())},
        "original_sizes": [[w, h, s, n] for (w, h, s), n in sizes.most_common(20)],
    }
    out = Path(__file__).resolve().parents[1] / "cxr" / "data" / "nih_profile.json"
    out.write_text(json.dumps(profile, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(label_sets)} label sets)")


if __name__ == "__main__":
    main(sys.argv[1])
