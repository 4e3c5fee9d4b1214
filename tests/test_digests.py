"""Digests are contracts: the same synthetic archive gives the same dataset and manifest digests as
the code before the package reshape (values computed at commit b008d2e, the flat ``cxr/`` layout).
A change here means every existing dataset version and manifest would be made again."""

from __future__ import annotations

import pytest

from cxr.data.ingest import ingest
from cxr.data.manifest import ManifestConfig, build_manifest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version

DATASET = "4e27feab99802771"
MANIFESTS = [
    (ManifestConfig("none"), "72db3d68d7b54bd2"),
    (ManifestConfig("weighted"), "f1ff77d396c366fa"),
    (ManifestConfig("resample", floor=0.05), "7698e91ae5703886"),
    (ManifestConfig("resample", target="Effusion", mode="under"), "6b1a3bb3f3ff2909"),
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
