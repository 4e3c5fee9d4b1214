"""The faults and bad inputs the suite injects, recorded by the tests that inject them.

A test that injects a fault ends, after its assertions passed, with::

    reliability.record("a flipped byte in a shard", "read refused: ShardIntegrityError names the file", lost="nothing")

(the ``reliability`` fixture in conftest.py). At the end of the run the records are written to
``.cache/test-results/reliability.json``; ``scripts/reliability_doc.py`` turns that file into the table in
docs/reliability.md. Only tests that passed write a record, so the table says what was seen.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / ".cache" / "test-results" / "reliability.json"


@dataclass(frozen=True)
class Fault:
    area: str  # ingest, dataset store, training, registry, services, ...
    fault: str  # what was injected
    outcome: str  # what the pipeline did
    lost: str  # what was lost: "nothing" unless the test shows otherwise
    test: str  # the pytest node id that saw it


class Recorder:
    """Collects the records of one test; they count only if the test passes."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.pending: list[Fault] = []

    def record(self, area: str, fault: str, outcome: str, lost: str = "nothing") -> None:
        self.pending.append(Fault(area, fault, outcome, lost, self.test))


def write(faults: list[Fault], path: Path = RESULTS) -> None:
    """Merge this run's records into ``path`` (a partial run keeps the other tests' earlier records).

    Several pytest-xdist workers may finish at once: the read-merge-write holds a lock file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept: list[dict[str, str]] = []
        if path.exists():
            ran = {f.test for f in faults}
            kept = [r for r in json.loads(path.read_text()) if r["test"] not in ran]
        rows = kept + [asdict(f) for f in faults]
        rows.sort(key=lambda r: (r["area"], r["test"], r["fault"]))
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(path)
