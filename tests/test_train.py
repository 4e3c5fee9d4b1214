"""Training end to end on a synthetic archive: the signal is learnable, every strategy trains, CAM localizes;
and the model card of the trained model (``cxr report``), rendered in a real headless Chromium, and finding a
subgroup effect planted in another synthetic source."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cxr.data.ingest import ingest
from cxr.data.manifest import ManifestConfig, build_manifest, write_manifest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version
from cxr.learn.config import TrainConfig
from cxr.learn.evaluate import evaluate_model
from cxr.learn.inference import load_model
from cxr.learn.predict import predict_images
from cxr.learn.result import TrainResult
from cxr.learn.train import main
from cxr.records import from_json
from tests.browser import BROWSER, NO_BROWSER, open_page
from tests.reliability import RESULTS


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    synthesize(SynthConfig(out=str(root / "src"), n_images=1500, size=128, seed=0, workers=2))
    version = open_version(ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(64,))).path)
    paths = {"root": root, "src": root / "src", "ds": root / "ds"}
    for strategy, extra in (("none", {}), ("weighted", {}), ("resample", {"floor": 0.05})):
        out = root / f"manifest-{strategy}"
        write_manifest(build_manifest(version, ManifestConfig(strategy, **extra)), str(out))
        paths[strategy] = out
    return paths


def train(archive: dict[str, Path], strategy: str, epochs: int, run: str | None = None, **kwargs) -> TrainResult:
    out = archive["root"] / f"run-{run or strategy}"
    kwargs.setdefault("model", "small")
    config = TrainConfig(
        manifest=str(archive[strategy]), output_dir=str(out), epochs=epochs, batch_size=32, seed=0, **kwargs
    )
    return main(config)


@pytest.fixture(scope="module")
def trained(archive) -> TrainResult:
    return train(archive, "none", epochs=6)


@pytest.fixture(scope="module")
def evaluation(archive, trained):
    return evaluate_model(str(archive["root"] / "run-none" / "model.pt"), str(archive["ds"]), n_boot=50)


def test_the_signal_is_learnable_mean_test_auroc_at_least_0_85(evaluation):
    assert evaluation.n > 250
    assert evaluation.mean_auroc >= 0.85, json.dumps({f: v.auroc for f, v in evaluation.findings.items()})


def test_each_auroc_lies_in_its_bootstrap_interval(evaluation):
    checked = 0
    for metrics in evaluation.findings.values():
        if metrics.auroc is not None and metrics.n_pos >= 10:
            lo, hi = metrics.auroc_ci95
            assert lo <= metrics.auroc <= hi
            checked += 1
    assert checked >= 3


def test_the_training_loss_falls(trained):
    assert trained.history[-1].train_loss < trained.history[0].train_loss
    assert [record.epoch for record in trained.history] == list(range(6))


def test_metrics_jsonl_starts_with_the_config_then_the_epochs(archive, trained):
    lines = [json.loads(line) for line in (archive["root"] / "run-none" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["params"]["model"] == "small" and lines[0]["params"]["epochs"] == 6
    assert len([line for line in lines if "val_mean_auroc" in line]) == 6


def test_result_json_is_what_training_returned(archive, trained):
    assert TrainResult.read(str(archive["root"] / "run-none")) == trained


def test_cam_localization_beats_random_heatmaps(archive, trained):
    result = evaluate_model(
        str(archive["root"] / "run-none" / "model.pt"),
        str(archive["ds"]),
        n_boot=0,
        out_dir=str(archive["root"] / "eval"),
    )
    cam, rnd = result.localization, result.localization_random
    boxes = sum(v.n for v in cam.values())
    assert boxes > 100
    cam_hits = sum(v.accuracy[0.1] * v.n for v in cam.values()) / boxes
    random_hits = sum(v.accuracy[0.1] * v.n for v in rnd.values()) / boxes
    assert cam_hits >= random_hits + 0.25, (cam_hits, random_hits)
    assert (archive["root"] / "eval" / "curves.png").exists() and list(
        (archive["root"] / "eval" / "heatmaps").glob("*.png")
    )


@pytest.mark.parametrize("strategy", ["weighted", "resample"])
def test_every_strategy_trains(archive, strategy):
    result = train(archive, strategy, epochs=2, tracking=False)  # tracking is tested elsewhere; here it cost 3/4
    bundle = torch.load(archive["root"] / f"run-{strategy}" / "model.pt", weights_only=True)
    assert bundle["strategy"] == strategy and result.val_mean_auroc > 0.7
    assert len(bundle["thresholds"]) == 14


def test_predict_reports_probabilities_boxes_and_overlays(archive, trained, tmp_path):
    images = sorted((archive["src"] / "images_001" / "images").glob("*.png"))[:4]
    results = predict_images(
        [str(p) for p in images], str(archive["root"] / "run-none" / "model.pt"), str(tmp_path / "hm")
    )
    assert [r.image for r in results] == [str(p) for p in images]
    for r in results:
        assert len(r.probabilities) == 14 and all(0 <= p <= 1 for p in r.probabilities.values())
        width, height = r.size
        for f in r.findings:
            x, y, w, h = f.box_1024
            assert x >= 0 and y >= 0 and x + w <= 1024 and y + h <= 1024 and 0 < f.heatmap_share <= 1
            px, py, pw, ph = f.box_px  # the same box in the image's own pixels (128 px files here)
            assert px + pw <= width and py + ph <= height and px == pytest.approx(x * width / 1024, abs=0.2)
    assert len(list((tmp_path / "hm").glob("*.png"))) == sum(len(r.findings) for r in results)


def test_transfer_learning_from_a_weights_file_and_a_frozen_backbone(archive, tmp_path):
    from torchvision.models import resnet50

    weights = tmp_path / "resnet50.pth"
    torch.save(resnet50(num_classes=1000).state_dict(), weights)  # stands in for downloaded ImageNet weights
    result = train(
        archive, "none", epochs=1, run="transfer", model="resnet50", weights=str(weights), freeze_epochs=1, max_steps=2
    )
    assert result.steps == 2
    model, _ = load_model(str(archive["root"] / "run-transfer" / "model.pt"))
    loaded = torch.load(weights, weights_only=True)
    body = dict(model.body.named_parameters())
    assert torch.equal(body["0.weight"], loaded["conv1.weight"])  # from the file, and frozen: unchanged
    assert torch.equal(body["7.2.conv3.weight"], loaded["layer4.2.conv3.weight"])
    with pytest.raises(ValueError, match="does not fit"):
        train(archive, "none", epochs=1, run="misfit", model="densenet121", weights=str(weights), max_steps=1)


def test_init_from_an_earlier_model_starts_from_its_weights(archive, trained):
    source, _ = load_model(str(archive["root"] / "run-none" / "model.pt"))
    train(
        archive,
        "weighted",
        epochs=1,
        run="init",
        init_from=str(archive["root"] / "run-none" / "model.pt"),
        max_steps=1,
        lr=1e-12,
    )
    started, _ = load_model(str(archive["root"] / "run-init" / "model.pt"))
    for name, tensor in source.state_dict().items():
        if tensor.is_floating_point() and "running" not in name:
            assert torch.allclose(tensor, started.state_dict()[name], atol=1e-6), name


@pytest.mark.s3
def test_training_reads_shards_from_s3_through_the_cache_and_checkpoints_to_s3(s3_bucket, tmp_path, monkeypatch):
    from cxr import storage

    monkeypatch.setenv("CXR_CACHE", str(tmp_path / "cache"))
    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=80, size=64, seed=2))
    version = ingest(str(tmp_path / "src"), f"{s3_bucket}/ds", IngestOptions(sizes=(32,)))
    write_manifest(build_manifest(open_version(f"{s3_bucket}/ds"), ManifestConfig("none")), f"{s3_bucket}/m")
    result = main(
        TrainConfig(manifest=f"{s3_bucket}/m", output_dir=f"{s3_bucket}/run", model="small", epochs=1, batch_size=16)
    )
    assert result.model_url == f"{s3_bucket}/run/model.pt" and storage.exists(f"{s3_bucket}/run/checkpoint.pt")
    cached = sorted((tmp_path / "cache" / "shards" / version.digest / "32").glob("*.npy"))
    assert cached and all(p.stat().st_size > 0 for p in cached)
    _, bundle = load_model(f"{s3_bucket}/run/model.pt")
    assert bundle.dataset_digest == version.digest


@pytest.fixture(scope="module")
def card(archive, trained) -> Path:
    """``cxr report`` as a user runs it (a process of its own), logging the card to the model's MLflow run."""
    out = archive["root"] / "card"
    command = [sys.executable, "-m", "cxr.cli", "report", str(archive["root"] / "run-none" / "model.pt")]
    command += ["--dataset", str(archive["ds"]), "--out", str(out), "--log-to-run", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"model card: {out / 'model_card.html'}"
    assert f"logged to MLflow run {trained.tracked.run_id}" in done.stderr
    return out


def test_report_logs_the_card_to_the_model_s_mlflow_run(card, trained):
    from cxr.tracking.mlflow_run import client

    logged = client().list_artifacts(trained.tracked.run_id, "model_card")
    assert sorted(Path(f.path).name for f in logged) == ["card.json", "model_card.html"]


@pytest.mark.skipif(BROWSER is None, reason=NO_BROWSER)
def test_the_model_card_renders_every_finding_the_subgroups_and_loaded_heatmaps_with_no_request_leaving(card, trained):
    from cxr.card.content import ModelCard
    from cxr.findings import FINDINGS

    data = from_json(ModelCard, (card / "card.json").read_text())
    with open_page(card / "model_card.html") as page:
        rows = page.evaluate("[...document.querySelectorAll('table.findings tbody tr')].map(r => r.dataset.finding)")
        shown = page.evaluate(
            "[...document.querySelectorAll('table.findings tbody tr')].map(r => r.cells[2].textContent.trim())"
        )
        captions = page.evaluate("[...document.querySelectorAll('table.subgroups caption')].map(c => c.textContent)")
        per_table = page.evaluate(
            "[...document.querySelectorAll('table.subgroups')].map(t => t.querySelectorAll('tr[data-finding]').length)"
        )
        greyed = page.evaluate("document.querySelectorAll('table.subgroups td.insufficient').length")
        gallery = "[...document.querySelectorAll('.gallery img')]"
        heatmaps = page.evaluate(f"{gallery}.map(i => [i.complete, i.naturalWidth])")
        diagrams = page.evaluate("document.querySelectorAll('svg.reliability circle').length")
        (RESULTS.parent / "model-card").mkdir(parents=True, exist_ok=True)
        page.screenshot(RESULTS.parent / "model-card" / "model_card.png")  # kept for people to look at
        requests, errors = list(page.requests), list(page.console_errors)
    assert rows == list(FINDINGS)
    assert shown == [str(row.metrics.n_pos) for row in data.findings]  # the page shows card.json's numbers
    assert captions == ["By sex", "By age band (years)", "By view position"] and per_table == [14, 14, 14]
    assert greyed > 0  # rare findings have too few positives in some subgroups: shown greyed, not hidden
    assert heatmaps and all(complete and width > 0 for complete, width in heatmaps), heatmaps
    assert diagrams > 0 and errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), [url[:80] for url in requests]
    assert data.provenance.lineage.run.id == trained.tracked.run_id  # card.json read back: the model's own run
    assert data.warnings == ()  # scored on the version it trained on


def test_a_subgroup_effect_planted_in_a_source_shows_as_lower_auroc_and_more_false_no_finding(archive, trained):
    """Another synthetic source whose women's findings are drawn at a fifth of the contrast: the card of the model
    (trained on an unaffected source) must show women's AUROC lower and their false "No Finding" rate higher."""
    from cxr.card.write import write_card

    root = archive["root"]
    planted = SynthConfig(str(root / "planted"), 600, 128, seed=1, workers=2, prevalence_power=0.4)
    synthesize(replace(planted, fainter_sex="F", fainter_strength=0.2))
    ingest(str(root / "planted"), str(root / "planted-ds"), IngestOptions(sizes=(64,)))
    # every split of this source is unseen by the model: its train split, the largest, gives the most cases
    model = str(root / "run-none" / "model.pt")
    files = write_card(model, str(root / "planted-ds"), str(root / "planted-card"), split="train")
    [warning] = files.card.warnings  # said at the top of the page: another version than the model trained on
    assert warning.startswith(f"dataset {files.card.dataset} is not the version the model was trained on")
    sexes = {g.group: g for g in files.card.subgroups if g.attribute == "sex"}
    women, men = sexes["F"], sexes["M"]
    shared = [f for f, c in women.findings.items() if c.sufficient and men.findings[f].sufficient]
    assert len(shared) >= 8, shared

    def mean_auroc(group):
        return sum(group.findings[f].auroc for f in shared) / len(shared)

    assert mean_auroc(women) < mean_auroc(men) - 0.05, (mean_auroc(women), mean_auroc(men))
    assert women.with_finding >= 50 and men.with_finding >= 50
    assert women.false_no_finding > men.false_no_finding + 0.1, (women.false_no_finding, men.false_no_finding)
