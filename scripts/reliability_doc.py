"""Write docs/reliability.md from the faults the test suite injected (``.cache/test-results/reliability.json``).

    .venv/bin/python -m pytest -q            # the tests record what they injected and saw
    .venv/bin/python scripts/reliability_doc.py

Only tests that passed write a record (tests/reliability.py), so every row is something the suite saw.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".cache" / "test-results" / "reliability.json"
DOC = ROOT / "docs" / "reliability.md"

HEADER = """# Reliability: every fault the suite injects, what the pipeline did, what was lost

This page is generated: `scripts/reliability_doc.py` writes it from the records that the tests which
inject a fault or a bad input leave when they pass (`tests/reliability.py`; the fixture
`reliability_record`). Regenerate it after a full run of the suite:

    .venv/bin/python -m pytest -q && .venv/bin/python scripts/reliability_doc.py

"Lost" is what the test saw lost: "nothing" means every input is accounted for (accepted or quarantined
with a reason), no finished work is thrown away and no decision was made on missing evidence.
"""


def render(rows: list[dict[str, str]]) -> str:
    lines = [HEADER]
    areas = Counter(r["area"] for r in rows)
    lines.append(
        f"{len(rows)} faults in {len(areas)} areas "
        f"({', '.join(f'{a}: {n}' for a, n in sorted(areas.items()))}); "
        f"{sum(r['lost'] == 'nothing' for r in rows)} lost nothing.\n"
    )
    for area in sorted(areas):
        lines.append(f"## {area}\n")
        lines.append("| fault injected | what the pipeline did | lost | test |")
        lines.append("|---|---|---|---|")
        for r in (r for r in rows if r["area"] == area):
            test = r["test"].split("::")
            where = f"`{test[0]}::{test[-1]}`" if len(test) > 1 else f"`{r['test']}`"
            cells = [r["fault"], r["outcome"], r["lost"], where]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    if not RESULTS.exists():
        print(f"no records at {RESULTS}: run the test suite first", file=sys.stderr)
        return 2
    rows = json.loads(RESULTS.read_text())
    DOC.write_text(render(rows))
    print(f"wrote {DOC.relative_to(ROOT)}: {len(rows)} faults")
    return 0


if __name__ == "__main__":
    sys.exit(main())
