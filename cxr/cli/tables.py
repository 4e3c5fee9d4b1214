"""Rendering for people: report tables (:mod:`cxr.reports`) as rich tables, and the tables only the
command line shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:  # types only: torch is imported by the commands that need it, not by `cxr --help`
    from cxr.data.source import SourceSummary
    from cxr.learn.predictor import Prediction
    from cxr.reports import ReportTable


def rich_table(report: ReportTable, title: bool = True) -> Table:
    table = Table(title=report.title if title else None, title_justify="left")
    for k, column in enumerate(report.columns):
        table.add_column(column, justify="left" if k == 0 else "right")
    for k, row in enumerate(report.rows):
        table.add_row(*row, style=report.styles[k] if report.styles else None)
    return table


def source_table(summary: SourceSummary) -> Table:
    table = Table(title=f"{summary.root} ({summary.edition} label table)", title_justify="left")
    table.caption = "prevalence: of the images that label the finding; missing labels are not negatives"
    table.add_column("finding")
    table.add_column("images", justify="right")
    table.add_column("prevalence", justify="right")
    if summary.unlabelled:
        table.add_column("missing labels", justify="right")
    n = max(summary.rows_accepted, 1)
    for finding, count in sorted(summary.positives.items(), key=lambda kv: -kv[1]):
        missing = summary.unlabelled.get(finding, 0)
        labelled = summary.rows_accepted - missing
        share = f"{100 * count / labelled:.2f} %" if labelled else "not labelled"
        table.add_row(finding, str(count), share, *((str(missing),) if summary.unlabelled else ()))
    table.add_row("No Finding", str(summary.no_finding), f"{100 * summary.no_finding / n:.2f} %", style="dim")
    return table


def source_lines(summary: SourceSummary) -> str:
    from cxr.data.source import split_lists_text

    quarantined = ", ".join(f"{k} {v}" for k, v in summary.rows_quarantined.items()) or "none"
    files = f"image files: {summary.image_files}   "
    if summary.archives:  # members of .tar.gz files are listed only by reading them (ingest does)
        files += (
            f"and {summary.archives} .tar.gz archives ({summary.archive_bytes / 1e9:.2f} GB, members listed when "
            f"ingest reads them)   rows without an unpacked file: {summary.rows_without_file}"
        )
    else:
        files += f"rows without a file: {summary.rows_without_file}"
    return (
        f"rows: {summary.rows_in} read, {summary.rows_accepted} accepted, quarantined: {quarantined}\n"
        f"patients: {summary.patients}   {files}   files without a row: {summary.files_without_row}\n"
        f"boxes: {summary.boxes}   {split_lists_text(summary)}"
    )


def prediction_table(prediction: Prediction) -> Table:
    table = Table(title=prediction.image, title_justify="left")
    columns = ("finding", "probability", "above threshold", "box (x, y, w, h; 1024 px)", "heatmap share")
    for column in columns:  # heatmap share: of the image, where the heatmap is >= 0.7 of its range
        table.add_column(column, justify="left" if column == "finding" else "right")
    above = {f.finding: f for f in prediction.findings}
    for finding, p in prediction.probabilities.items():
        hit = above.get(finding)
        if hit:
            box = ", ".join(f"{v:.0f}" for v in hit.box_1024)
            table.add_row(finding, f"{p:.3f}", "yes", box, f"{100 * hit.heatmap_share:.1f} %")
        else:
            table.add_row(finding, f"{p:.3f}", "", "", "")
    return table
