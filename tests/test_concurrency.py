"""Ingests into one output at once, as real processes, in the interleavings that used to break it.

Each ingest is a process that plans, decodes and publishes when the test lets it (a flag file per
step), so the worst orders happen every time: an older snapshot planned first and published last, and
a publish (with its cleanup) running while another ingest's decoded parts wait for their own publish.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cxr import storage
from cxr.data.lock import StoreBusyError, store_lock
from cxr.data.version import open_version
from cxr.learn.shards import ShardStore
from tests.archives import archive, grow

STEPS = ("plan", "decode", "publish")
INGEST_STEPS = """
import json, sys, time
from pathlib import Path
from cxr.data.ingest import publish, run_parts
from cxr.data.plan import IngestOptions, plan_ingest

source, out, flags, name = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]

def step(what):
    while not (flags / f"{name}.{what}.go").exists():
        time.sleep(0.01)

step("plan")
plan = plan_ingest(source, out, IngestOptions(sizes=(32,), part_images=4))
(flags / f"{name}.plan.done").touch()
step("decode")
run_parts(plan)
(flags / f"{name}.decode.done").touch()
step("publish")
summary = publish(plan)
result = {"digest": summary.digest, "created": summary.created, "latest": summary.latest}
(flags / f"{name}.result.json").write_text(json.dumps(result))
(flags / f"{name}.publish.done").touch()
"""


class Ingest:
    """One ingest process that waits for the test before each step."""

    def __init__(self, name: str, source: Path, out: Path, flags: Path) -> None:
        self.name, self.flags = name, flags
        self.proc = subprocess.Popen(
            [sys.executable, "-c", INGEST_STEPS, str(source), str(out), str(flags), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def go(self, step: str) -> None:
        (self.flags / f"{self.name}.{step}.go").touch()

    def wait(self, step: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not (self.flags / f"{self.name}.{step}.done").exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} ended during {step}: {self.proc.communicate()[1][-3000:]}")
            assert time.monotonic() < deadline, f"{self.name} did not finish {step}"
            time.sleep(0.01)

    def run(self, *steps: str) -> None:
        for step in steps:
            self.go(step)
            self.wait(step)

    def result(self) -> dict:
        assert self.proc.wait(timeout=60) == 0, self.proc.communicate()[1][-3000:]
        return json.loads((self.flags / f"{self.name}.result.json").read_text())


def _part_problems(out: Path) -> list[str]:
    """Parts whose records name accepted images but whose shard is missing or holds another count."""
    problems = []
    for records in (out / ".work" / "parts").glob("*/records.parquet"):
        accepted = pq.read_table(records, columns=["reason"])["reason"].null_count
        shard = records.parent / "32.npy"
        if accepted and (not shard.exists() or np.load(shard, mmap_mode="r").shape[0] != accepted):
            problems.append(f"{records.parent.name}: {accepted} accepted, shard {shard.exists() and 'wrong'}")
    return problems


def test_two_ingests_at_once_latest_names_the_newer_and_no_part_is_left_without_its_shard(tmp_path, reliability_record):
    src, out, flags = archive(tmp_path / "src", 24, seed=7), tmp_path / "ds", tmp_path / "flags"
    flags.mkdir()
    old_first, old_last = Ingest("old-first", src, out, flags), Ingest("old-last", src, out, flags)
    old_first.run("plan")
    old_last.run("plan")  # both observe the archive before it grows
    grow(src, 6)
    grown = Ingest("grown", src, out, flags)
    grown.run("plan")
    for ingest in (grown, old_first):  # decoding side by side: the parts they share are written by both
        ingest.go("decode")
    grown.wait("decode")
    old_first.wait("decode")
    old_first.run("publish")  # publishes (and cleans up) while the grown ingest's parts wait for their publish
    grown.run("publish")
    old_last.run("decode", "publish")  # the older snapshot, published last

    newer, first, last = grown.result(), old_first.result(), old_last.result()
    assert (out / "LATEST").read_text().strip() == newer["digest"] != first["digest"] == last["digest"]
    assert newer["latest"] and not last["latest"] and not last["created"]
    assert _part_problems(out) == []
    version = open_version(str(out))
    store = ShardStore(version.path, version.digest, 32)
    shards = set(version.metadata(columns=["shard"])["shard"].to_pylist())
    assert sum(store.array(s).shape[0] for s in shards) == version.accounting.accepted == 30
    reliability_record.record(
        "dataset store",
        "three ingests into one output at once: an older snapshot planned first and published last, "
        "a publish while another ingest's parts waited",
        "LATEST names the newer snapshot (compare-and-swap on the observation time); every ingest completed; "
        "no part was removed under an ingest, none left with records but no shard",
    )


def test_the_output_lock_excludes_a_second_holder_locally(tmp_path):
    root = str(tmp_path / "ds")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from cxr.data.lock import store_lock\n"
            "with store_lock(sys.argv[1], 'test'):\n    print('held', flush=True); time.sleep(30)",
            root,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusyError, match="pid"), store_lock(root, "second", wait_s=0.3):
            pass
    finally:
        holder.kill()
        holder.wait()
    with store_lock(root, "after a kill -9", wait_s=5):  # the kernel released it: never stale
        pass


@pytest.mark.s3
def test_an_s3_lease_excludes_a_second_holder_and_a_stale_lease_is_taken_over(s3_bucket, reliability_record):
    root = f"{s3_bucket}/ds"
    with store_lock(root, "first"), pytest.raises(StoreBusyError, match="first"), store_lock(root, "2nd", wait_s=0.5):
        pass
    assert not storage.exists(f"{root}/.lock")  # released
    dead = {"host": "gone", "pid": 1, "purpose": "killed publish", "expires": time.time() - 1, "id": "x"}
    storage.write_text(f"{root}/.lock", json.dumps(dead))
    started = time.monotonic()
    with store_lock(root, "after a crash", wait_s=5):
        assert json.loads(storage.read_text(f"{root}/.lock"))["purpose"] == "after a crash"
    assert time.monotonic() - started < 3
    reliability_record.record(
        "dataset store",
        "an S3 lease left by a killed holder (expired), and a second holder while one is live",
        "the live lease excluded the second (StoreBusyError names the holder); the expired one was taken "
        "over by a conditional put (If-Match on its ETag)",
    )
