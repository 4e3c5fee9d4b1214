"""The report tables people read, built once: the CLI renders them with rich, the Prefect tasks publish
them as table or markdown artifacts. A table's rows are text, formatted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow.compute as pc

from cxr.data.splits import SPLITS
from cxr.findings import FINDING_COLUMNS, FINDINGS

if TYPE_CHECKING:  # types only: the command line imports this module and must start fast (no torch)
    from cxr.data.ingest import DecodeSummary, IngestSummary
    from cxr.data.manifest import ManifestInfo
    from cxr.data.stats import LabelStats, SplitStats
    from cxr.data.version import DatasetVersion
    from cxr.learn.evaluate import Evaluation
    from cxr.learn.result import TrainResult
    from cxr.tracking.gate import Registration


@dataclass(frozen=True)
class ReportTable:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    styles: tuple[str | None, ...] = ()  # per row, for a terminal (e.g. "yellow"); empty: none

    def records(self, **extra: str) -> list[dict[str, str]]:
        """One dict per row (Prefect's table artifacts), with ``extra`` columns first."""
        return [{**extra, **dict(zip(self.columns, row, strict=True))} for row in self.rows]

    def markdown(self) -> str:
        lines = [f"| {' | '.join(self.columns)} |", "|" + "---|" * len(self.columns)]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return "\n".join(lines)


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def accounting_table(summary: IngestSummary) -> ReportTable:
    """Where every input of an ingest went."""
    acc = summary.accounting
    rows: list[tuple[str, str]] = [
        ("version", summary.digest),
        ("inputs (label rows + files no row names)", str(acc.inputs)),
        ("accepted", str(acc.accepted)),
        ("quarantined", str(acc.quarantined)),
    ]
    styles: list[str | None] = [None] * len(rows)
    for reason, n in acc.quarantined_by_reason.items():
        rows.append((f"  {reason}", str(n)))
        styles.append("yellow")
    rows.append(("boxes kept / quarantined", f"{acc.boxes.accepted} / {acc.boxes.quarantined}"))
    rows.append(("splits", "  ".join(f"{k} {v}" for k, v in summary.splits.items())))
    styles += [None, None]
    return ReportTable("ingest", ("item", "count"), tuple(rows), tuple(styles))


def stats_table(name: str, split: SplitStats) -> ReportTable:
    """One split's frequencies and class weights (and, where labels are missing, how many: out of both counts)."""
    missing = any(s.n_missing for s in split.findings.values())
    rows = tuple(
        (f, str(s.n_pos), str(s.n_neg), f"{s.freq_pos:.4f}", f"{s.w_pos:.4f}", f"{s.w_neg:.4f}")
        + ((str(s.n_missing),) if missing else ())
        for f, s in split.findings.items()
    )
    title = f"{name}: {split.n} images, {split.no_finding} without a finding"
    if len(split.sources) > 1:
        title += " (" + ", ".join(f"{k} {v}" for k, v in split.sources.items()) + ")"
    columns = ("finding", "n_pos", "n_neg", "freq_pos", "w_pos", "w_neg") + (("missing",) if missing else ())
    return ReportTable(title, columns, rows)


def stats_tables(stats: LabelStats) -> dict[str, ReportTable]:
    return {name: stats_table(name, split) for name, split in stats.splits.items()}


def manifest_table(info: ManifestInfo) -> ReportTable:
    """Training prevalence before and after balancing, and how many distinct images carry the positives."""
    before, after = info.train_prevalence["before"], info.train_prevalence["after"]
    rows = tuple(
        (f, f"{100 * before[f]:.2f} %", f"{100 * after[f]:.2f} %", str(info.reuse.distinct_positive_images[f]))
        for f in info.findings
    )
    of = f"datasets {', '.join(d.digest for d in info.versions)}" if info.mixed else f"dataset {info.dataset.digest}"
    title = f"manifest {info.digest} ({info.strategy}) of {of}"
    return ReportTable(title, ("finding", "train share before", "after", "distinct positive images"), rows)


def manifest_lines(info: ManifestInfo) -> str:
    """Rows and draws per split, and the reuse resampling costs."""
    reuse = info.reuse
    return (
        "rows/draws: "
        + "  ".join(f"{k} {v.rows}/{v.draws}" for k, v in info.splits.items())
        + f"\nmost reused training image: {reuse.most_repeated_image} x{reuse.max_repeat}; "
        f"{reuse.rows_repeated} rows repeated, {reuse.rows_dropped} dropped"
        + "".join(
            f"\nsource {source}: " + "  ".join(f"{split} {n}" for split, n in splits.items())
            for source, splits in info.sources.items()
        )
    )


def evaluation_table(evaluation: Evaluation) -> ReportTable:
    """Per finding: positives, AUROC with its interval, AUPRC, sensitivity, specificity, CAM localization."""
    rows = []
    for finding, m in evaluation.findings.items():
        loc, rnd = evaluation.localization.get(finding), evaluation.localization_random.get(finding)
        ci = "-" if not m.auroc_ci95 else f"{m.auroc_ci95[0]:.2f}-{m.auroc_ci95[1]:.2f}"
        where = "-" if not (loc and rnd) else f"{loc.accuracy[0.1]:.2f} / {rnd.accuracy[0.1]:.2f} (n={loc.n})"
        rows.append(
            (finding, str(m.n_pos), _num(m.auroc), ci, _num(m.auprc), _num(m.sensitivity), _num(m.specificity), where)
        )
    title = (
        f"dataset {evaluation.dataset}, {evaluation.split} split (n = {evaluation.n}): "
        f"mean AUROC {_num(evaluation.mean_auroc)}"
    )
    if evaluation.scored_findings and len(evaluation.scored_findings) < len(evaluation.findings):
        title += f" over the {len(evaluation.scored_findings)} findings both the model and this source label"
    columns = ("finding", "pos", "AUROC", "95 % CI", "AUPRC", "sens", "spec", "CAM T(IoBB)>0.1 / random")
    return ReportTable(title, columns, tuple(rows))


def positives_table(version: DatasetVersion) -> ReportTable:
    """Positives per finding and split, from the version's metadata."""
    metadata = version.metadata(columns=["split", *FINDING_COLUMNS])
    masks = {s: pc.equal(metadata["split"], s) for s in SPLITS}
    counts = {s: pc.sum(masks[s]).as_py() or 0 for s in SPLITS}
    rows = []
    for finding, column in zip(FINDINGS, FINDING_COLUMNS, strict=True):
        cells = []
        for s in SPLITS:
            n = pc.sum(pc.and_(masks[s], metadata[column])).as_py() or 0
            labelled = pc.sum(pc.and_(masks[s], pc.is_valid(metadata[column]))).as_py() or 0
            cells.append(f"{n} ({100 * n / max(labelled, 1):.1f} %)" if labelled or not counts[s] else "not labelled")
        rows.append((finding, *cells))
    columns = ("finding", *(f"{s} ({counts[s]})" for s in SPLITS))
    return ReportTable(f"dataset {version.digest}: positives per split", columns, tuple(rows))


@dataclass(frozen=True)
class RetrainSummary:
    """What one run of the retrain flow did, step by step."""

    ingest: IngestSummary
    decoded: DecodeSummary
    manifest: ManifestInfo
    trained: TrainResult
    evaluation: Evaluation
    registration: Registration
    card: str | None = None  # the model card's page (model_card.html)

    @property
    def run_id(self) -> str | None:
        return self.trained.tracked.run_id if self.trained.tracked else None

    def headline(self) -> str:
        return (
            f"dataset {self.ingest.digest} ({'new' if self.ingest.created else 'unchanged'}, "
            f"{self.decoded.decoded} images decoded); manifest {self.manifest.digest} ({self.manifest.strategy}); "
            f"MLflow run {self.run_id}"
        )

    def markdown(self) -> str:
        r = self.registration
        lines = [
            f"# Retrain: {r.name} version {r.version}",
            "",
            f"- dataset version `{self.ingest.digest}` ({'new' if self.ingest.created else 'unchanged'})",
            f"- manifest `{self.manifest.digest}` ({self.manifest.strategy})",
            f"- MLflow run `{self.run_id}`; val mean AUROC {_num(self.trained.val_mean_auroc)}",
            f"- gate: {r.verdict}: {'; '.join(r.reasons)}",
            f"- test mean AUROC {_num(self.evaluation.mean_auroc)}",
            f"- model card: `{self.card}`" if self.card else "- model card: not written",
            "",
            evaluation_table(self.evaluation).markdown(),
        ]
        return "\n".join(lines) + "\n"
