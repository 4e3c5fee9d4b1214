"""The imbalance study: no balancing vs. class weights vs. resampling, on the same dataset version with
the same budget and seeds, scored in distribution and on a shifted source.

The source material's claim: weighting or resampling helps the rare findings; its warning: resampling
reuses the same few positive images, so a model may do worse on images from another source. Each
strategy is trained with several seeds (child MLflow runs of one parent run) and scored on the
in-distribution test split and on every image of a shifted source (other contrast, noise, scale and
position, another prevalence profile): per finding AUROC (bootstrap interval), AUPRC, sensitivity at
90 % specificity and expected calibration error, with the spread over seeds, and the reuse count of
the most repeated training images.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from cxr import storage
from cxr.data.manifest import STRATEGIES, ManifestConfig, build_manifest, write_manifest
from cxr.data.synth_render import Acquisition
from cxr.data.version import DatasetVersion, open_version
from cxr.findings import FINDINGS
from cxr.learn.config import TrainConfig
from cxr.learn.inference import load_model, predict_split, single_process
from cxr.learn.metrics import (
    auroc,
    bootstrap_auroc,
    expected_calibration_error,
    mean_defined,
    sensitivity_at_specificity,
)
from cxr.learn.models import MODEL_NAMES
from cxr.learn.train import main
from cxr.tracking import tags
from cxr.tracking.mlflow_run import client, experiment_id, tracking_uri

SHIFTED_ACQUISITION = Acquisition(contrast=0.7, noise=1.8, zoom=0.9, offset=0.05)
SHIFTED_PREVALENCE_POWER = 0.6  # rare findings commoner than in NIH
RARE = ("Hernia", "Pneumonia")


@dataclass(frozen=True)
class StudyConfig:
    strategies: tuple[str, ...] = ("none", "weighted", "resample")
    seeds: tuple[int, ...] = (0, 1, 2)
    model: str = "small"
    epochs: int = 6
    batch_size: int = 32
    image_size: int | None = None
    floor: float = 0.05  # resample: least share of positive draws per finding
    n_boot: int = 200
    experiment: str = "cxr-study"
    device: str = "auto"  # training and scoring: the GPU if there is one

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(f"strategies must be some of {', '.join(STRATEGIES)}, got {list(self.strategies)}")
        if not self.seeds or self.epochs < 1:
            raise ValueError("give at least one seed and one epoch")
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")


def _metrics(labels: np.ndarray, probs: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, f in enumerate(FINDINGS):
        y, p = labels[:, i], probs[:, i]
        interval = bootstrap_auroc(y, p, n_boot, rng) if n_boot else None
        out[f] = {
            "n_pos": int(y.sum()),
            "auroc": auroc(y, p),
            "auroc_ci95": list(interval) if interval else None,
            "auprc": float(average_precision_score(y, p)) if y.sum() else None,
            "sens_at_90_spec": sensitivity_at_specificity(y, p, 0.9),
            "ece": expected_calibration_error(y, p),
        }
    return {"findings": out, "mean_auroc": mean_defined([v["auroc"] for v in out.values()])}


def score(
    model_url: str, version: DatasetVersion, split: str | None, n_boot: int, seed: int, device: str = "cpu"
) -> dict[str, Any]:
    """Metrics of a model on one split of a version (``None``: every row)."""
    model, bundle = load_model(model_url, single_process(device).device)
    rows, probs, labels = predict_split(model, bundle, version, split)
    return {"n": len(rows), **_metrics(labels, probs, n_boot, seed)}


@dataclass(frozen=True)
class StudyReport:
    """Where the study's report is, its MLflow parent run, and its verdict in plain language."""

    parent_run_id: str
    report: str  # imbalance-study.md; study.json beside it holds every number
    verdict: tuple[str, ...]
    markdown: str


def run_study(dataset: str, shifted: str, out: str, config: StudyConfig = StudyConfig()) -> StudyReport:
    """Train every strategy with every seed, score each model on both sources, write the report."""
    version, shifted_version = open_version(dataset), open_version(shifted)
    uri = tracking_uri()
    mlflow_client = client(uri)
    parent_tags = {tags.DATASET_DIGEST: version.digest, tags.SHIFTED_DATASET_DIGEST: shifted_version.digest}
    parent = mlflow_client.create_run(
        experiment_id(mlflow_client, uri, config.experiment), run_name="imbalance-study", tags=parent_tags
    ).info.run_id
    mlflow_client.log_param(parent, "config", json.dumps(asdict(config)))
    results: list[dict[str, Any]] = []
    for strategy in config.strategies:
        for seed in config.seeds:
            manifest_dir = storage.join(out, "manifests", f"{strategy}-{seed}")
            manifest = build_manifest(version, ManifestConfig(strategy, floor=config.floor, seed=seed))
            write_manifest(manifest, manifest_dir)
            trained = main(
                TrainConfig(
                    manifest=manifest_dir,
                    output_dir=storage.join(out, "runs", f"{strategy}-{seed}"),
                    model=config.model,
                    epochs=config.epochs,
                    batch_size=config.batch_size,
                    image_size=config.image_size,
                    seed=seed,
                    experiment=config.experiment,
                    run_name=f"{strategy}-seed{seed}",
                    parent_run_id=parent,
                    device=config.device,
                )
            )
            results.append(
                {
                    "strategy": strategy,
                    "seed": seed,
                    "run_id": trained.tracked.run_id if trained.tracked else None,
                    "model_url": trained.model_url,
                    "reuse": asdict(manifest.info.reuse),
                    "in_distribution": score(trained.model_url, version, "test", config.n_boot, seed, config.device),
                    "shifted": score(trained.model_url, shifted_version, None, config.n_boot, seed, config.device),
                }
            )
    report = write_report(results, config, version.digest, shifted_version.digest, out)
    for name in ("imbalance-study.md", "study.json", "auroc_by_strategy.png", "rare_findings.png"):
        local = storage.join(out, name)
        if not storage.is_remote(local):
            mlflow_client.log_artifact(parent, local, "report")
    for strategy, summary in report["summary"].items():
        for source in ("in_distribution", "shifted"):
            if summary[source]["mean_auroc"] is not None:
                mlflow_client.log_metric(parent, f"{strategy}_{source}_mean_auroc", summary[source]["mean_auroc"])
    mlflow_client.set_terminated(parent)
    return StudyReport(parent, storage.join(out, "imbalance-study.md"), tuple(report["verdict"]), report["markdown"])


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None
    return float(np.mean(defined)), float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per strategy and source: mean AUROC over seeds (with spread), per finding means, reuse."""
    summary: dict[str, Any] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in results):
        runs = [r for r in results if r["strategy"] == strategy]
        entry: dict[str, Any] = {
            "seeds": [r["seed"] for r in runs],
            "max_repeat": max(r["reuse"]["max_repeat"] for r in runs),
        }
        for source in ("in_distribution", "shifted"):
            mean, std = _mean_std([r[source]["mean_auroc"] for r in runs])
            per = {}
            for f in FINDINGS:
                per[f] = {
                    metric: _mean_std([r[source]["findings"][f][metric] for r in runs])
                    for metric in ("auroc", "auprc", "sens_at_90_spec", "ece")
                }
            entry[source] = {"mean_auroc": mean, "mean_auroc_std": std, "findings": per}
        summary[strategy] = entry
    return summary


def verdict(summary: dict[str, Any]) -> list[str]:
    """Plain-language findings: who won where, the rare findings, and resampling's cost under shift."""
    lines = []
    for source, label in (("in_distribution", "in distribution"), ("shifted", "on the shifted source")):
        ranked = sorted(
            ((s, v[source]["mean_auroc"]) for s, v in summary.items() if v[source]["mean_auroc"] is not None),
            key=lambda kv: -kv[1],
        )
        if ranked:
            best, value = ranked[0]
            rest = ", ".join(f"{s} {v:.3f}" for s, v in ranked[1:])
            note = ""
            if len(ranked) > 1:
                runner_up = ranked[1][0]
                spread = max(
                    summary[best][source]["mean_auroc_std"] or 0, summary[runner_up][source]["mean_auroc_std"] or 0
                )
                if value - ranked[1][1] <= spread:
                    note = (
                        f"; the lead over {runner_up} is within the spread over seeds ({spread:.3f}): no clear winner"
                    )
            lines.append(f"Mean AUROC {label}: {best} is best ({value:.3f}; {rest}){note}.")
    for finding in RARE:
        for source, label in (("in_distribution", "in distribution"), ("shifted", "shifted")):
            scores = {s: v[source]["findings"][finding]["auroc"][0] for s, v in summary.items()}
            scores = {s: x for s, x in scores.items() if x is not None}
            if scores:
                best = max(scores, key=scores.get)
                listed = ", ".join(f"{s} {x:.3f}" for s, x in scores.items())
                lines.append(f"{finding} ({label}): {best} has the best AUROC ({listed}).")
            else:
                lines.append(f"{finding} ({label}): no AUROC (no positive case in that set).")
    if "resample" in summary and "none" in summary:
        drop = {
            s: (v["in_distribution"]["mean_auroc"] or 0) - (v["shifted"]["mean_auroc"] or 0) for s, v in summary.items()
        }
        more = drop["resample"] > drop["none"]
        lines.append(
            f"Under shift, resampling loses {drop['resample']:.3f} mean AUROC and no balancing {drop['none']:.3f}: "
            + ("resampling degrades more, as the source warns" if more else "resampling does not degrade more here")
            + f" (its most reused training image appears {summary['resample']['max_repeat']} times per epoch)."
        )
    return lines


def _fmt(pair: tuple[float | None, float | None]) -> str:
    mean, std = pair
    return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"


def write_report(
    results: list[dict[str, Any]], config: StudyConfig, digest: str, shifted_digest: str, out: str
) -> dict[str, Any]:
    """``imbalance-study.md``, ``study.json`` and two figures into ``out``; returns the summary and verdict."""
    from cxr.charts import study_chart

    summary = summarize(results)
    lines_verdict = verdict(summary)
    n_in = results[0]["in_distribution"]["n"]
    n_shift = results[0]["shifted"]["n"]
    md = [
        "# Imbalance study: no balancing vs. class weights vs. resampling",
        "",
        f"Dataset version `{digest}` (test split: {n_in} images); "
        f"shifted source `{shifted_digest}` ({n_shift} images: "
        f"contrast {SHIFTED_ACQUISITION.contrast}, noise x{SHIFTED_ACQUISITION.noise}, "
        f"zoom {SHIFTED_ACQUISITION.zoom}, "
        f"offset {SHIFTED_ACQUISITION.offset}, label-set frequencies to the power {SHIFTED_PREVALENCE_POWER}). "
        f"Model `{config.model}`, {config.epochs} epochs, batch {config.batch_size}, seeds {list(config.seeds)}; "
        f"resampling to a {config.floor:.0%} floor per finding. Values: mean ± standard deviation over seeds.",
        "",
        "## Verdict",
        "",
        *[f"- {line}" for line in lines_verdict],
        "",
        "## Mean AUROC",
        "",
        "| strategy | in distribution | shifted | most reused training image (repeats per epoch) |",
        "|---|---|---|---|",
    ]
    for strategy, v in summary.items():
        md.append(
            f"| {strategy} | {_fmt((v['in_distribution']['mean_auroc'], v['in_distribution']['mean_auroc_std']))} | "
            f"{_fmt((v['shifted']['mean_auroc'], v['shifted']['mean_auroc_std']))} | {v['max_repeat']} |"
        )
    for source, label in (("in_distribution", "In distribution"), ("shifted", "Shifted source")):
        md += [
            "",
            f"## {label}: per finding",
            "",
            "| finding | " + " | ".join(f"{s} AUROC | {s} AUPRC | {s} sens@90%spec | {s} ECE" for s in summary) + " |",
            "|---|" + "---|" * (4 * len(summary)),
        ]
        for f in FINDINGS:
            cells = []
            for s in summary:
                m = summary[s][source]["findings"][f]
                cells += [_fmt(m["auroc"]), _fmt(m["auprc"]), _fmt(m["sens_at_90_spec"]), _fmt(m["ece"])]
            md.append(f"| {f}{' (rare)' if f in RARE else ''} | " + " | ".join(cells) + " |")
    md += [
        "",
        "## Runs",
        "",
        "| strategy | seed | MLflow run | in-dist mean AUROC (95 % CI of Infiltration) | shifted mean AUROC |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        ci = r["in_distribution"]["findings"]["Infiltration"]["auroc_ci95"]
        md.append(
            f"| {r['strategy']} | {r['seed']} | `{r['run_id']}` | {r['in_distribution']['mean_auroc']:.3f} "
            f"({'-' if not ci else f'{ci[0]:.2f}-{ci[1]:.2f}'}) | {r['shifted']['mean_auroc']:.3f} |"
        )
    md += ["", "![mean AUROC by strategy](auroc_by_strategy.png)", "", "![rare findings](rare_findings.png)", ""]
    storage.write_text(storage.join(out, "imbalance-study.md"), "\n".join(md))
    storage.write_text(
        storage.join(out, "study.json"),
        json.dumps(
            {"config": asdict(config), "summary": summary, "verdict": lines_verdict, "results": results},
            indent=2,
            default=str,
        ),
    )
    overall, rare = study_chart(summary, RARE)
    storage.write_bytes(storage.join(out, "auroc_by_strategy.png"), overall)
    storage.write_bytes(storage.join(out, "rare_findings.png"), rare)
    return {"summary": summary, "verdict": lines_verdict, "markdown": "\n".join(md)}
