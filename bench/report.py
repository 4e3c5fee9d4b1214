"""`cxr report` on a test split of 25,000+ images: the card's time apart from inference, side by side in one run.

Builds once, in ``--work`` (reused by later runs): a synthetic archive (``cxr synth``, 64 px PNGs, NIH's
prevalence unless ``--prevalence-power``), ingested at 32 px with ``--test-share`` of the patients in test (the
synth's own ``train_val_list.txt`` / ``test_list.txt`` are moved aside to ``official-lists/``: with them the
split follows the lists, about 23 % test, and the test share is not used), its ``stats.json`` (as ``cxr stats``
writes it), a weighted manifest, and a small CNN trained for a few steps in a child process with MLflow tracking
into ``WORK/mlflow.db``, so that the card has a lineage, a manifest and data charts to show. Then measures:

- in process, ``--repeats`` times: :func:`cxr.card.write.write_card` (device cpu): ``inference_s`` (model load,
  the split's probabilities, the CAM boxes of its boxed images) and ``card_s`` (everything after: provenance,
  numbers, charts, the page, the files), against the issue's budget of 60 s for ``card_s``. The first
  repetition is this process's first call (the torch and pyarrow imports are timed apart, before it; MLflow's
  import and the tracking store's opening fall in its ``card_s``);
- the parts of ``card_s``, each timed alone on the same inputs (one more inference first): provenance
  (:func:`cxr.card.provenance.gather`), per-finding metrics with patient-bootstrap intervals, calibration,
  the false "No Finding" rate, subgroups, localization, the data charts, the page
  (:func:`cxr.card.page.render`) and the files;
- what a user waits for: the whole ``cxr report MODEL --dataset DS --out OUT --device cpu`` in a fresh process
  (wall clock), and the line it prints with its own inference and card times;
- the baseline a user had before: ``cxr evaluate --model MODEL --dataset DS --device cpu --out OUT`` in a fresh
  process (per-finding metrics and localization; no subgroups, calibration or page).

    .venv/bin/python bench/report.py                                  # work folder .cache/bench-report
    .venv/bin/python bench/report.py --work /tmp/bench-report --repeats 2 --profile

Goal (issue: model card): ``cxr report`` on a 25,000-image test split in under a minute, model inference excluded.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing
import os
import platform
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S = 60.0
MIN_TEST = 25_000


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=".cache/bench-report", help="work folder, reused when it holds a build")
    parser.add_argument("--images", type=int, default=34_000, help="synthetic images (default 34,000)")
    parser.add_argument("--size", type=int, default=64, help="synthetic PNG side in px (default 64)")
    parser.add_argument("--test-share", type=float, default=0.8, help="patients to test (default 0.8)")
    parser.add_argument("--prevalence-power", type=float, default=1.0, help="synth label-set power (1: NIH's)")
    parser.add_argument("--steps", type=int, default=20, help="training steps of the tiny model (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="in-process write_card calls (default 3)")
    parser.add_argument("--min-test", type=int, default=MIN_TEST, help="least test images (default 25,000)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one in-process write_card call")
    return parser.parse_args()


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - started


def build_dataset(work: Path, args: argparse.Namespace):
    """The dataset version (built, or the one already in ``work``), with its stats.json."""
    from cxr import storage
    from cxr.data.ingest import ingest
    from cxr.data.plan import IngestOptions
    from cxr.data.stats import dataset_stats, write_stats
    from cxr.data.synth import SynthConfig, synthesize
    from cxr.data.version import open_version

    ds = work / "ds"
    if (ds / "LATEST").exists():
        version = open_version(str(ds))
        print(f"dataset: reused {version.path}")
    else:
        src = work / "src"
        config = SynthConfig(
            out=str(src),
            n_images=args.images,
            size=args.size,
            seed=0,
            workers=os.cpu_count() or 1,
            prevalence_power=args.prevalence_power,
        )
        result, t_synth = timed(synthesize, config)
        print(f"synth: {result.n_images:,} images, {result.n_patients:,} patients, {args.size} px: {t_synth:.1f} s")
        lists = work / "official-lists"
        lists.mkdir(exist_ok=True)
        for name in ("train_val_list.txt", "test_list.txt"):
            if (src / name).exists():
                (src / name).rename(lists / name)
        options = IngestOptions(sizes=(32,), test_share=args.test_share)
        summary, t_ingest = timed(ingest, str(src), str(ds), options)
        version = open_version(summary.path)
        print(f"ingest (in process, no Dask): {t_ingest:.1f} s -> {version.path}")
    if not storage.exists(version.file("stats.json")):
        stats, t_stats = timed(dataset_stats, version)
        write_stats(version, stats)
        print(f"stats (as cxr stats writes them): {t_stats:.1f} s")
    return version


def build_manifest(work: Path, version) -> str:
    from cxr.data.manifest import ManifestConfig, build_manifest, write_manifest

    out = work / "manifest"
    written, took = timed(lambda: write_manifest(build_manifest(version, ManifestConfig("weighted")), str(out)))
    print(f"manifest (weighted): {'built' if written else 'reused'} in {took:.1f} s")
    return str(out)


def train(manifest: str, output_dir: str, steps: int) -> None:
    """In a child process, so that this one's first write_card call imports MLflow itself, as a user's does."""
    from cxr.learn.config import TrainConfig
    from cxr.learn.train import main

    config = TrainConfig(
        manifest=manifest,
        output_dir=output_dir,
        model="small",
        image_size=32,
        epochs=1,
        batch_size=32,
        max_steps=steps,
        device="cpu",
        seed=0,
    )
    result = main(config)
    print(f"model: {result.model_url} (MLflow run {result.tracked.run_id if result.tracked else None})", flush=True)


def build_model(work: Path, manifest: str, steps: int) -> str:
    model = work / "model" / "model.pt"
    if model.exists():
        print(f"model: reused {model}")
        return str(model)
    child = multiprocessing.get_context("spawn").Process(target=train, args=(manifest, str(model.parent), steps))
    _, took = timed(lambda: (child.start(), child.join()))
    if child.exitcode != 0 or not model.exists():
        sys.exit(f"training failed (exit code {child.exitcode})")
    print(f"trained {steps} steps in {took:.1f} s (child process, with its imports)")
    return str(model)


def split_size(version) -> tuple[int, int]:
    import pyarrow.compute as pc

    metadata = version.metadata()
    test = metadata.filter(pc.equal(metadata["split"], "test"))
    return test.num_rows, len(set(test["patient_id"].to_pylist()))


def in_process(model: str, dataset: str, work: Path, repeats: int) -> list[tuple[float, float, float]]:
    """``repeats`` write_card calls: (inference_s, card_s, wall) each."""
    from cxr.card.write import write_card

    out = []
    for k in range(repeats):
        folder = work / f"card-inprocess-{k + 1}"
        shutil.rmtree(folder, ignore_errors=True)
        files, wall = timed(write_card, model, dataset, str(folder), split="test", device="cpu")
        note = " (first call in this process)" if k == 0 else ""
        print(
            f"in process #{k + 1}{note}: inference_s {files.inference_s:.2f} s, card_s {files.card_s:.2f} s "
            f"({files.card_s / BUDGET_S:.2f} of the {BUDGET_S:.0f} s budget), call {wall:.2f} s"
        )
        out.append((files.inference_s, files.card_s, wall))
    return out


def breakdown(model: str, dataset: str, work: Path) -> dict[str, float]:
    """The parts of card_s, each timed alone, after one more inference (the same steps as write_card)."""
    from datetime import UTC, datetime

    import pyarrow.compute as pc

    from cxr import __version__
    from cxr.card.content import SplitPredictions, build_card, card_localization
    from cxr.card.page import render
    from cxr.card.provenance import gather
    from cxr.card.write import charts, split_groups, write_files
    from cxr.data.version import open_version
    from cxr.findings import FINDINGS
    from cxr.learn.calibration import reliability
    from cxr.learn.evaluate import localize, only_learned
    from cxr.learn.inference import load_model, predict_rows, shard_store, single_process
    from cxr.learn.metrics import evaluate_predictions
    from cxr.learn.shards import split_rows
    from cxr.learn.subgroups import MIN_CASES, false_no_finding_rate, subgroup_metrics

    times: dict[str, float] = {}
    info = single_process("cpu")
    version = open_version(dataset)
    metadata = version.metadata()
    started = time.perf_counter()
    net, bundle = load_model(model, info.device)
    store = shard_store(version, bundle)
    rows = split_rows(metadata, "test", expand_repeats=False)
    probs, labels = predict_rows(net, store, rows, bundle.image_size, info)
    times["(inference) probabilities"] = time.perf_counter() - started
    located, times["(inference) CAM boxes"] = timed(localize, net, version, store, rows, bundle.image_size, 0, info, 12)
    part = metadata.filter(pc.equal(metadata["split"], "test"))
    predictions = SplitPredictions(rows.patient_ids, only_learned(labels, bundle), probs, split_groups(part))
    labels, probs, patients = predictions.labels, predictions.probs, predictions.patients
    thresholds = list(bundle.thresholds) or [0.5] * len(FINDINGS)
    provenance, times["provenance (lineage, stats.json, manifest, gate)"] = timed(
        gather, model, version, bundle.config, bundle.dataset_digest
    )
    _, times["per finding: AUROC + AUPRC, 200 patient resamples"] = timed(
        evaluate_predictions, labels, probs, thresholds, n_boot=200, seed=0, groups=patients
    )
    _, times["calibration (14 reliability curves)"] = timed(
        lambda: [reliability(labels[:, i], probs[:, i]) for i in range(len(FINDINGS))]
    )
    _, times['false "No Finding" rate'] = timed(false_no_finding_rate, labels, probs, thresholds)
    groups, times["subgroups (sex, age, view), 200 resamples each"] = timed(
        subgroup_metrics, labels, probs, thresholds, patients, predictions.groups, 200, 0
    )
    overlays = {i: f"gallery/{name}" for i, name, _ in located.overlays}
    _, times["localization section"] = timed(card_localization, located, overlays)
    images = {f"gallery/{name}": png for _, name, png in located.overlays}
    chart_images, times["data charts (prevalence, balance)"] = timed(charts, provenance)
    images.update(chart_images)
    card, times["build_card (all the numbers above, together)"] = timed(
        build_card,
        model,
        version.digest,
        "test",
        predictions,
        thresholds,
        "the model's",
        located,
        overlays,
        provenance,
        datetime.now(UTC).isoformat(timespec="seconds"),
        __version__,
        200,
        0,
    )
    page, times["page (render)"] = timed(render, card, images)
    folder = work / "card-breakdown"
    shutil.rmtree(folder, ignore_errors=True)
    _, times["files (PNGs, card.json, the page)"] = timed(write_files, str(folder), page, card, images)
    print(
        f"breakdown inputs: {len(labels):,} rows, {len(groups)} subgroups (MIN_CASES {MIN_CASES}), "
        f"{len(located.boxes):,} boxes, {len(images)} images, page {len(page) / 1e6:.2f} MB"
    )
    return times


def profile(model: str, dataset: str, work: Path) -> None:
    from cxr.card.write import write_card

    folder = work / "card-profile"
    shutil.rmtree(folder, ignore_errors=True)
    profiler = cProfile.Profile()
    profiler.enable()
    files = write_card(model, dataset, str(folder), split="test", device="cpu")
    profiler.disable()
    print(f"profiled call: inference_s {files.inference_s:.2f} s, card_s {files.card_s:.2f} s (under cProfile)")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    print(text.getvalue())


def load() -> str:
    """The 1, 5 and 15 minute load averages: other processes sharing the cores show here."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cli() -> list[str]:
    script = Path(sys.executable).parent / "cxr"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cxr.cli"]


def fresh(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run([*cli(), *args], capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-4000:], sep="\n")
        sys.exit(f"cxr {args[0]} failed (exit code {done.returncode})")
    return wall, done


def glance(card_json: Path) -> None:
    """What card.json holds for a split this large: subgroups, insufficient cells, where it says None."""
    card = json.loads(card_json.read_text())
    by_attribute: dict[str, list[str]] = {}
    for group in card["subgroups"]:
        by_attribute.setdefault(group["attribute"], []).append(f"{group['group']} ({group['n_images']:,})")
    cells = [c for g in card["subgroups"] for c in g["findings"].values()]
    print(
        f"card.json: {card['n_images']:,} images, {card['n_patients']:,} patients, mean AUROC {card['mean_auroc']}, "
        f"{len(card['subgroups'])} subgroups, {sum(not c['sufficient'] for c in cells)} of {len(cells)} cells "
        f"insufficient, {card_json.stat().st_size / 1e6:.2f} MB"
    )
    for attribute, groups in by_attribute.items():
        print(f"  {attribute}: {', '.join(groups)}")
    nones: dict[str, int] = {}

    def walk(value, path: str) -> None:
        if value is None:
            nones[path] = nones.get(path, 0) + 1
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if not key[0].isupper() else f"{path}.<finding>")
        elif isinstance(value, list):
            for item in value:
                walk(item, f"{path}[]")

    walk(card, "card")
    print("  None in card.json (path: count):", ", ".join(f"{p}: {n}" for p, n in sorted(nones.items())) or "none")


def main() -> None:
    args = parse()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"  # before anything imports mlflow
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"work folder {work}; MLflow {os.environ['MLFLOW_TRACKING_URI']}; load average {load()}"
    )

    started = time.perf_counter()
    version = build_dataset(work, args)
    manifest = build_manifest(work, version)
    model = build_model(work, manifest, args.steps)
    n_test, n_patients = split_size(version)
    print(f"setup: {time.perf_counter() - started:.1f} s; test split: {n_test:,} images of {n_patients:,} patients")
    if n_test < args.min_test:
        sys.exit(f"the test split holds {n_test:,} images, under {args.min_test:,}: raise --images or --test-share")
    dataset = version.path

    print("\n== in process ==")
    _, t_import = timed(__import__, "cxr.card.write")
    print(f"import cxr.card.write (torch, pyarrow, the card's modules): {t_import:.2f} s")
    reps = in_process(model, dataset, work, args.repeats)

    print("\n== card_s, part by part (each timed alone, same inputs) ==")
    parts = breakdown(model, dataset, work)
    for name, seconds in parts.items():
        print(f"  {name:<55} {seconds:8.2f} s")

    print(f"\n== fresh processes (what a user waits for) == load average {load()}")
    out_report, out_eval = work / "card-cli", work / "evaluate-cli"
    shutil.rmtree(out_report, ignore_errors=True)
    shutil.rmtree(out_eval, ignore_errors=True)
    t_report, done = fresh(["report", model, "--dataset", dataset, "--out", str(out_report), "--device", "cpu"])
    said = next((line for line in done.stdout.splitlines() + done.stderr.splitlines() if "inference" in line), "")
    print(f"cxr report: {t_report:.2f} s wall; it printed: {said.strip()}")
    t_eval, _ = fresh(["evaluate", "--model", model, "--dataset", dataset, "--device", "cpu", "--out", str(out_eval)])
    print(f"cxr evaluate: {t_eval:.2f} s wall")
    glance(out_report / "card.json")

    if args.profile:
        print("\n== cProfile of one in-process write_card call ==")
        profile(model, dataset, work)

    print(f"\n== summary: {n_test:,} test images of {n_patients:,} patients ==")
    print(f"{'measurement':<52} {'inference_s':>12} {'card_s':>9} {'vs 60 s':>8} {'wall':>9}")
    for k, (inference_s, card_s, wall) in enumerate(reps, 1):
        name = f"write_card in process #{k}" + (" (first call)" if k == 1 else "")
        print(f"{name:<52} {inference_s:>10.2f} s {card_s:>7.2f} s {card_s / BUDGET_S:>7.2f}x {wall:>7.2f} s")
    print(f"{'cxr report, fresh process':<52} {'':>12} {'':>9} {'':>8} {t_report:>7.2f} s")
    print(f"{'cxr evaluate, fresh process (the baseline)':<52} {'':>12} {'':>9} {'':>8} {t_eval:>7.2f} s")
    print(f"cxr report / cxr evaluate: {t_report / t_eval:.2f}x; load average at the end {load()}")


if __name__ == "__main__":
    main()
