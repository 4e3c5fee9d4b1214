"""Digests are contracts: the same synthetic archive gives the same dataset and manifest digests.

Values computed at commit b008d2e (the flat ``cxr/`` layout) held until issue 15, whose digest rule 2 leaves
out where images came from and where they are kept (``source_uri``, ``shard``, ``shard_index``; quarantine
records by image id and reason) so that packed and unpacked sources give one digest: every dataset digest
changed once, and the manifest digests with them (they hash their dataset's digest). Issue 16's schema 2
(a ``source_format`` column; findings, age, sizes and spacing nullable) changed them once more, and the
manifests' schema 2 (``source_format``, rows keyed by split, image id and shard) theirs. A change here
means every existing dataset version and manifest would be made again."""

from __future__ import annotations

import pytest

from cxr.data.ingest import ingest
from cxr.data.manifest import ManifestConfig, build_manifest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version

DATASET = "b8e834b0f3a640f4"
MANIFESTS = [
    (ManifestConfig("none"), "fd7a131d7c989375"),
    (ManifestConfig("weighted"), "aae4773365aed7d0"),
    (ManifestConfig("resample", floor=0.05), "f8cb681804921de8"),
    (ManifestConfig("resample", target="Effusion", mode="under"), "17c0cae261d554a0"),
]


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    root = tmp_path_factory.mktemp("digests")
    synthesize(SynthConfig(out=str(root / "src"), n_images=120, size=64, seed=0, workers=1))
    return open_version(ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(32,))).path)


def test_the_dataset_digest_is_the_one_the_flat_layout_gave(version):
    assert version.digest == DATASET


@pytest.mark.parametrize(("config", "digest"), MANIFESTS, ids=lambda v: getattr(v, "strategy", v))
def test_each_manifest_digest_is_the_one_the_flat_layout_gave(version, config, digest):
    assert build_manifest(version, config).digest == digest
