"""Digests are contracts: the same synthetic archive gives the same dataset and manifest digests.

Values computed at commit b008d2e (the flat ``cxr/`` layout) held until issue 15, whose digest rule 2 leaves
out where images came from and where they are kept (``source_uri``, ``shard``, ``shard_index``; quarantine
records by image id and reason) so that packed and unpacked sources give one digest: every dataset digest
changed once, and the manifest digests with them (they hash their dataset's digest). A change here means
every existing dataset version and manifest would be made again."""

from __future__ import annotations

import pytest

from cxr.data.ingest import ingest
from cxr.data.manifest import ManifestConfig, build_manifest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version

DATASET = "793f6ff52fddeab1"
MANIFESTS = [
    (ManifestConfig("none"), "d7b220156988f305"),
    (ManifestConfig("weighted"), "6c8925df6e2663cd"),
    (ManifestConfig("resample", floor=0.05), "b9300268ceeb7ed6"),
    (ManifestConfig("resample", target="Effusion", mode="under"), "395717cd16fa2460"),
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
