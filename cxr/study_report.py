"""The imbalance study's report: per strategy means over seeds, a verdict in plain language, and
``imbalance-study.md``, ``study.json`` and two figures (:func:`write_report`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr import storage
from cxr.findings import FINDINGS

RARE = ("Hernia", "Pneumonia")  # the findings the verdict and the second figure single out

if TYPE_CHECKING:
    from cxr.study import StepBudget, StudyConfig

SOURCES = (("in_distribution", "in distribution"), ("shifted", "on the shifted source"))


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None
    return float(np.mean(defined)), float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per strategy and source: means over seeds (with spread) of the mean AUROC, of the operating points
    and of each finding's metrics; the steps taken and the reuse."""
    first = results[0]["in_distribution"]["findings"][FINDINGS[0]]
    finding_metrics = [m for m in first if m not in ("n_pos", "auroc_ci95")]
    summary: dict[str, Any] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in results):
        runs = [r for r in results if r["strategy"] == strategy]
        entry: dict[str, Any] = {
            "seeds": [r["seed"] for r in runs],
            "steps": sorted({r["steps"] for r in runs}),
            "max_repeat": max(r["reuse"]["max_repeat"] for r in runs),
        }
        for source, _ in SOURCES:
            means = {
                key: _mean_std([r[source][key] for r in runs])
                for key in runs[0][source]
                if key.startswith("mean_") and key != "mean_auroc"
            }
            mean, std = _mean_std([r[source]["mean_auroc"] for r in runs])
            per = {
                f: {m: _mean_std([r[source]["findings"][f][m] for r in runs]) for m in finding_metrics}
                for f in FINDINGS
            }
            entry[source] = {"mean_auroc": mean, "mean_auroc_std": std, **means, "findings": per}
        summary[strategy] = entry
    return summary


def verdict(summary: dict[str, Any], specificity: float, cross: dict[str, Any] | None = None) -> list[str]:
    """Plain-language findings: who won where, the rare findings, resampling's cost under shift, and how the
    val-chosen operating point holds on the shifted source. With ``cross`` (the other source in another format,
    labelling fewer findings), its own line replaces the cost under shift: the two mean AUROCs are over
    different findings, so only the cross-source line compares like with like."""
    lines = []
    labels = dict(SOURCES)
    if cross is not None:
        labels["shifted"] = f"on the other source (the {len(cross['shared_findings'])} findings it labels)"
    for source, label in labels.items():
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
    other = "shifted" if cross is None else "other source"
    for finding in RARE:
        for source, label in (("in_distribution", "in distribution"), ("shifted", other)):
            scores = {s: v[source]["findings"][finding]["auroc"][0] for s, v in summary.items()}
            scores = {s: x for s, x in scores.items() if x is not None}
            if source == "shifted" and cross is not None and finding not in cross["labelled"]:
                lines.append(f"{finding} ({label}): not scored, the other source does not label it.")
            elif scores:
                best = max(scores, key=scores.get)
                listed = ", ".join(f"{s} {x:.3f}" for s, x in scores.items())
                lines.append(f"{finding} ({label}): {best} has the best AUROC ({listed}).")
            else:
                lines.append(f"{finding} ({label}): no AUROC (no positive case in that set).")
    if cross is not None:
        lines.append(cross_source_verdict(cross))
    elif "resample" in summary and "none" in summary:
        drop = {
            s: (v["in_distribution"]["mean_auroc"] or 0) - (v["shifted"]["mean_auroc"] or 0) for s, v in summary.items()
        }
        more = drop["resample"] > drop["none"]
        lines.append(
            f"Under shift, resampling loses {drop['resample']:.3f} mean AUROC and no balancing {drop['none']:.3f}: "
            + ("resampling degrades more, as the source warns" if more else "resampling does not degrade more here")
            + f" (its most reused training image appears {summary['resample']['max_repeat']} times per epoch)."
        )
    parts = []
    for s, v in summary.items():
        spec = [v[source]["mean_spec_spec90"][0] for source, _ in SOURCES]
        sens = [v[source]["mean_sens_spec90"][0] for source, _ in SOURCES]
        if None not in spec and None not in sens:
            parts.append(f"{s} {spec[0]:.2f} -> {spec[1]:.2f} (sensitivity {sens[0]:.2f} -> {sens[1]:.2f})")
    if parts:
        lines.append(
            f"At the thresholds chosen on val for {specificity:.0%} specificity, the mean specificity over findings "
            f"goes from the test split to the {'shifted' if cross is None else 'other'} source: {'; '.join(parts)}."
        )
    return lines


def cross_source(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run and per strategy (mean and spread over seeds): the mean AUROC over the findings the other source
    labels and both sets score, in source and on the other source, and the drop between them."""
    shared = [
        f
        for f in FINDINGS
        if all(
            r["shifted"]["findings"][f]["n"] and r["in_distribution"]["findings"][f]["auroc"] is not None
            for r in results
        )
    ]
    runs = []
    for r in results:
        pairs = [(r["in_distribution"]["findings"][f]["auroc"], r["shifted"]["findings"][f]["auroc"]) for f in shared]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        inside = float(np.mean([a for a, _ in pairs])) if pairs else None
        other = float(np.mean([b for _, b in pairs])) if pairs else None
        drop = inside - other if pairs else None
        runs.append(
            {"strategy": r["strategy"], "seed": r["seed"], "in_source": inside, "other_source": other, "drop": drop}
        )
    strategies = {}
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == strategy]
        strategies[strategy] = {
            "seeds": [r["seed"] for r in mine],
            **{key: _mean_std([r[key] for r in mine]) for key in ("in_source", "other_source", "drop")},
        }
    labelled = [f for f in FINDINGS if all(r["shifted"]["findings"][f]["n"] for r in results)]
    return {"shared_findings": shared, "labelled": labelled, "runs": runs, "strategies": strategies}


def cross_source_verdict(cross: dict[str, Any]) -> str:
    """The source's claim, answered: does resampling lose more AUROC on the other source than no balancing?"""
    drops = {s: v["drop"] for s, v in cross["strategies"].items() if v["drop"][0] is not None}
    listed = "; ".join(f"{s} {_fmt(d)}" for s, d in drops.items())
    n = len(cross["shared_findings"])
    head = f"Across sources, over the {n} findings both label, the mean AUROC drops by: {listed}"
    if "resample" not in drops or "none" not in drops:
        return head + "."
    (resample, r_sd), (none, n_sd) = drops["resample"], drops["none"]
    spread = max(r_sd or 0.0, n_sd or 0.0)
    if abs(resample - none) <= spread:
        answer = (
            f"resampling and no balancing differ by {resample - none:+.3f}, within the spread over seeds "
            f"({spread:.3f}): no clear answer"
        )
    elif resample > none:
        answer = (
            f"resampling drops {resample - none:.3f} more than no balancing: it generalises worse, as the source warns"
        )
    else:
        answer = (
            f"resampling drops {none - resample:.3f} less than no balancing: the source's warning does not hold here"
        )
    return f"{head}; {answer}."


def _cross_source_lines(cross: dict[str, Any]) -> list[str]:
    md = [
        "## Cross-source: does a balanced model generalise worse to another source?",
        "",
        f"Trained on the first source, scored on its test split (in source) and on every image of the other source, "
        f"over the findings both label and score: {', '.join(cross['shared_findings']) or 'none'}. "
        "Values: mean ± standard deviation over seeds.",
        "",
        "| strategy | seeds | in-source mean AUROC | other-source mean AUROC | drop |",
        "|---|---|---|---|---|",
    ]
    for strategy, v in cross["strategies"].items():
        seeds = ", ".join(map(str, v["seeds"]))
        md.append(f"| {strategy} | {seeds} | {_fmt(v['in_source'])} | {_fmt(v['other_source'])} | {_fmt(v['drop'])} |")
    md += ["", "| strategy | seed | in source | other source | drop |", "|---|---|---|---|---|"]
    for r in cross["runs"]:
        cells = ["-" if r[k] is None else f"{r[k]:.3f}" for k in ("in_source", "other_source", "drop")]
        md.append(f"| {r['strategy']} | {r['seed']} | " + " | ".join(cells) + " |")
    return md


def _fmt(pair: tuple[float | None, float | None]) -> str:
    mean, std = pair
    return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"


def _pair(m: dict[str, Any], sens: str, spec: str) -> str:
    return f"{_fmt(m[sens])} / {_fmt(m[spec])}"


def write_report(
    results: list[dict[str, Any]], header: str, config: StudyConfig, budget: StepBudget, specificity: float, out: str
) -> dict[str, Any]:
    """``imbalance-study.md``, ``study.json`` and two figures into ``out``; returns the summary and verdict.

    ``header``: the paragraphs that say what was run; ``specificity``: the val operating point's target.
    """
    from cxr.charts import study_chart

    summary = summarize(results)
    cross = cross_source(results) if config.cross_source else None
    lines_verdict = verdict(summary, specificity, cross)
    at = f"at the val {specificity:.0%}-specificity threshold"
    md = [
        "# Imbalance study: no balancing vs. class weights vs. resampling",
        "",
        header,
        "",
        "## Verdict",
        "",
        *[f"- {line}" for line in lines_verdict],
        "",
        *([*_cross_source_lines(cross), ""] if cross is not None else []),
        "## Mean AUROC and operating points (means over findings)",
        "",
        f"| strategy | steps | in distribution | shifted | sensitivity / specificity {at}: in distribution | "
        "shifted | most reused training image (repeats per epoch) |",
        "|---|---|---|---|---|---|---|",
    ]
    for strategy, v in summary.items():
        md.append(
            f"| {strategy} | {', '.join(map(str, v['steps']))} | "
            f"{_fmt((v['in_distribution']['mean_auroc'], v['in_distribution']['mean_auroc_std']))} | "
            f"{_fmt((v['shifted']['mean_auroc'], v['shifted']['mean_auroc_std']))} | "
            f"{_pair(v['in_distribution'], 'mean_sens_spec90', 'mean_spec_spec90')} | "
            f"{_pair(v['shifted'], 'mean_sens_spec90', 'mean_spec_spec90')} | {v['max_repeat']} |"
        )
    for source, label in (("in_distribution", "In distribution"), ("shifted", "Shifted source")):
        md += [
            "",
            f"## {label}: per finding",
            "",
            "| finding | " + " | ".join(f"{s} AUROC | {s} AUPRC | {s} ECE" for s in summary) + " |",
            "|---|" + "---|" * (3 * len(summary)),
        ]
        for f in FINDINGS:
            cells = []
            for s in summary:
                m = summary[s][source]["findings"][f]
                cells += [_fmt(m["auroc"]), _fmt(m["auprc"]), _fmt(m["ece"])]
            md.append(f"| {f}{' (rare)' if f in RARE else ''} | " + " | ".join(cells) + " |")
        md += [
            "",
            f"## {label}: sensitivity / specificity at the thresholds chosen on val",
            "",
            "| finding | "
            + " | ".join(f"{s} (Youden on val) | {s} ({specificity:.0%} specificity on val)" for s in summary)
            + " |",
            "|---|" + "---|" * (2 * len(summary)),
        ]
        for f in FINDINGS:
            cells = []
            for s in summary:
                m = summary[s][source]["findings"][f]
                cells += [_pair(m, "sens_youden", "spec_youden"), _pair(m, "sens_spec90", "spec_spec90")]
            md.append(f"| {f}{' (rare)' if f in RARE else ''} | " + " | ".join(cells) + " |")
    md += [
        "",
        "## Runs",
        "",
        "| strategy | seed | MLflow run | epochs | steps | images drawn | learning rate at the last step "
        "(share of peak) | in-dist mean AUROC (95 % CI of Infiltration, patients resampled) | shifted mean AUROC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ci = r["in_distribution"]["findings"]["Infiltration"]["auroc_ci95"]
        md.append(
            f"| {r['strategy']} | {r['seed']} | `{r['run_id']}` | {r['epochs']} | {r['steps']} | {r['images']} | "
            f"{r['final_lr_share']:.3f} | {r['in_distribution']['mean_auroc']:.3f} "
            f"({'-' if not ci else f'{ci[0]:.2f}-{ci[1]:.2f}'}) | {r['shifted']['mean_auroc']:.3f} |"
        )
    md += ["", "![mean AUROC by strategy](auroc_by_strategy.png)", "", "![rare findings](rare_findings.png)", ""]
    storage.write_text(storage.join(out, "imbalance-study.md"), "\n".join(md))
    record = {
        "config": asdict(config),
        "budget": asdict(budget),
        "summary": summary,
        "verdict": lines_verdict,
        "results": results,
        "cross_source": cross,
    }
    storage.write_text(storage.join(out, "study.json"), json.dumps(record, indent=2, default=str))
    overall, rare = study_chart(summary, RARE)
    storage.write_bytes(storage.join(out, "auroc_by_strategy.png"), overall)
    storage.write_bytes(storage.join(out, "rare_findings.png"), rare)
    return {"summary": summary, "verdict": lines_verdict, "markdown": "\n".join(md)}
