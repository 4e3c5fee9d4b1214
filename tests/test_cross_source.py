"""Two sources at once: a mixed manifest of an NIH-format and a CheXpert-format synthetic source trains,
counts its rows per source, and a model is scored on another source over the findings both label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr.data.finding_map import finding_map
from cxr.data.ingest import ingest
from cxr.data.manifest import ManifestConfig, build_manifest, read_manifest, write_manifest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version
from cxr.findings import FINDINGS
from cxr.learn.config import TrainConfig
from cxr.learn.evaluate import evaluate_model
from cxr.learn.train import main

CHEXPERT = finding_map("chexpert").labelled  # the 7 findings a CheXpert-format source labels


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cross")
    out = {"root": root}
    for name, fmt, seed in (("nih", "nih", 1), ("chexpert", "chexpert", 2)):
        src = synthesize(SynthConfig(out=str(root / f"src-{name}"), n_images=120, size=64, seed=seed, format=fmt)).out
        out[name] = Path(ingest(src, str(root / f"ds-{name}"), IngestOptions(sizes=(64,))).path)
    return out


def train(sources: dict[str, Path], name: str, versions: list[Path]) -> Path:
    manifest = build_manifest([open_version(str(v)) for v in versions], ManifestConfig("weighted"))
    folder = sources["root"] / f"manifest-{name}"
    write_manifest(manifest, str(folder))
    config = TrainConfig(
        manifest=str(folder),
        output_dir=str(sources["root"] / f"run-{name}"),
        model="small",
        epochs=1,
        batch_size=16,
        max_steps=4,
        tracking=False,
        device="cpu",
    )
    return Path(main(config).model_url)


def test_a_mixed_manifest_counts_each_source_and_weighs_what_each_labels(sources):
    nih, chexpert = open_version(str(sources["nih"])), open_version(str(sources["chexpert"]))
    manifest = build_manifest([nih, chexpert], ManifestConfig("weighted"))
    info = manifest.info
    assert info.mixed and info.dataset_digest == f"{nih.digest}+{chexpert.digest}"
    assert info.sources == {
        f"nih:{nih.digest}": {s: nih.info["splits"].get(s, 0) for s in ("train", "val", "test")},
        f"chexpert:{chexpert.digest}": {s: chexpert.info["splits"].get(s, 0) for s in ("train", "val", "test")},
    }
    table = manifest.table.to_pylist()
    assert {r["shard"].split("/")[0] for r in table} == {nih.digest, chexpert.digest}
    # Mass: only the NIH rows label it; its weights are those of NIH's training rows alone
    alone = build_manifest(nih, ManifestConfig("weighted")).info.class_weights["Mass"]
    assert info.class_weights["Mass"] == alone
    both = [r["effusion"] for r in table if r["split"] == "train" and r["effusion"] is not None]
    assert info.class_weights["Effusion"].w_neg == pytest.approx(np.mean(both))


def test_a_mixed_runs_lineage_tags_name_every_version(sources):
    import json

    from cxr.tracking import tags
    from cxr.tracking.loggers import lineage_tags

    nih, chexpert = open_version(str(sources["nih"])), open_version(str(sources["chexpert"]))
    manifest = build_manifest([nih, chexpert], ManifestConfig("none"))
    lineage = lineage_tags(TrainConfig(manifest=str(sources["root"] / "m")), manifest)
    assert lineage[tags.DATASET_DIGEST] == f"{nih.digest}+{chexpert.digest}"  # gc keeps both (needed.py)
    assert [v["digest"] for v in json.loads(lineage[tags.DATASETS])] == [nih.digest, chexpert.digest]


def test_the_chain_of_a_mixed_model_lists_each_version_with_its_adapter():
    from cxr.tracking.lineage import DatasetLink, Lineage, ManifestLink, ModelLink, RunLink, format_chain

    def source(name: str) -> dict:
        return {"root": f"/data/{name}", "adapter": {"name": name, "version": 1}, "label_table": "t", "edition": "e"}

    chain = Lineage(
        ModelLink("model.pt"),
        RunLink("r1", "0", "FINISHED", "0.1.0", None, None, 0.8),
        ManifestLink("m1", "weighted", "/m", True),
        DatasetLink("aaaa", "/ds/nih/aaaa"),
        source("nih"),
        others=((DatasetLink("bbbb", "/ds/cx/bbbb"), source("chexpert")),),
    )
    text = format_chain(chain)
    assert "dataset   aaaa  at /ds/nih/aaaa" in text and "dataset   bbbb  at /ds/cx/bbbb" in text
    assert "(nih adapter v1," in text and "(chexpert adapter v1," in text


def test_a_model_trained_on_two_sources_and_one_trained_on_chexpert_score_only_shared_findings(sources):
    mixed = train(sources, "mixed", [sources["nih"], sources["chexpert"]])
    read = read_manifest(str(sources["root"] / "manifest-mixed"))
    assert read.info.mixed and len(read.table) == sum(read.info.splits[s].rows for s in ("train", "val", "test"))
    on_chexpert = evaluate_model(str(mixed), str(sources["chexpert"]), n_boot=0)
    assert set(on_chexpert.scored_findings) <= set(CHEXPERT) and on_chexpert.dataset_warning() is None
    assert all(on_chexpert.findings[f].n == 0 for f in FINDINGS if f not in CHEXPERT)

    chexpert_only = train(sources, "chexpert", [sources["chexpert"]])
    on_nih = evaluate_model(str(chexpert_only), str(sources["nih"]), n_boot=0)
    assert set(on_nih.scored_findings) <= set(CHEXPERT) and len(on_nih.scored_findings) >= 4
    unlearned = [f for f in FINDINGS if f not in CHEXPERT]
    assert all(on_nih.findings[f].auroc is None and on_nih.findings[f].n == 0 for f in unlearned)
    scored = [on_nih.findings[f].auroc for f in on_nih.scored_findings if on_nih.findings[f].auroc is not None]
    assert on_nih.mean_auroc == pytest.approx(np.mean(scored))
