"""``cxr synth | inspect | ingest | stats | manifest``: the archive becomes a dataset version, its
statistics and a manifest."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cxr.cli.console import announce, console, fail, guarded, out, progress
from cxr.cli.tables import rich_table, source_lines, source_table
from cxr.data.cluster import WORKER_MEMORY_LIMIT, format_memory
from cxr.data.gc import KEEP_NEWEST
from cxr.data.splits import TEST_SHARE, VAL_SHARE
from cxr.records import to_json

if TYPE_CHECKING:
    from cxr.data.synth import SynthConfig, SynthResult

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
FormatOption = Annotated[
    str | None,
    typer.Option("--format", help="The source's format: nih or chexpert (default: recognised from its files)."),
]
UncertainOption = Annotated[
    str,
    typer.Option(
        "--uncertain", help="CheXpert-family uncertain (-1.0) labels: ones, zeros, or ignore (missing, not negative)."
    ),
]
BlankOption = Annotated[
    str, typer.Option("--blank", help="CheXpert-family blank (not mentioned) labels: ignore (missing) or zeros.")
]
DatasetOption = Annotated[str, typer.Option("--dataset", help="A dataset root (its LATEST) or a version folder.")]


def synth(
    out_dir: Annotated[str, typer.Option("--out", help="Folder or s3:// prefix to write the dataset to.")],
    n_images: Annotated[int, typer.Option("--n-images", help="Number of images.")] = 2000,
    size: Annotated[int, typer.Option(help="Image side in px (the release's PNGs are 1024).")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    edition: Annotated[str, typer.Option(help="Label table edition: 2017 (trailing commas) or v2020.")] = "v2020",
    strength: Annotated[float, typer.Option(help="Contrast of each finding's sign (0: unlearnable).")] = 1.0,
    fainter_sex: Annotated[
        str | None, typer.Option(help="A planted subgroup effect: this sex's (M or F) signs are fainter.")
    ] = None,
    fainter_strength: Annotated[
        float, typer.Option(help="Multiplier of --strength for --fainter-sex images (0 to 1).")
    ] = 0.3,
    per_folder: Annotated[int, typer.Option(help="Images per images_NNN/images folder.")] = 10_000,
    workers: Annotated[int, typer.Option(help="Rendering processes (output does not depend on it).")] = os.cpu_count()
    or 1,
    contrast: Annotated[float, typer.Option(help="Anatomy contrast factor (a shifted source: e.g. 0.7).")] = 1.0,
    noise: Annotated[float, typer.Option(help="Noise factor (e.g. 1.8).")] = 1.0,
    zoom: Annotated[float, typer.Option(help="Body scale factor (e.g. 0.9).")] = 1.0,
    offset: Annotated[float, typer.Option(help="Body shift right and down, share of the side (e.g. 0.05).")] = 0.0,
    prevalence_power: Annotated[
        float, typer.Option(help="Label-set frequencies to this power (< 1: rare findings commoner).")
    ] = 1.0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace what --out holds (its images and tables are removed first).")
    ] = False,
    synth_format: Annotated[
        str,
        typer.Option(
            "--format", help="Layout: nih (PNGs, Data_Entry table, boxes) or chexpert (JPEGs, train.csv/valid.csv)."
        ),
    ] = "nih",
    as_json: JsonFlag = False,
) -> None:
    """Make a synthetic dataset in the NIH layout (or the CheXpert one), with real NIH prevalence and co-occurrence.

    A folder that is not empty is refused unless it holds this very synth (same settings: reused, or finished
    if it was interrupted) or --overwrite is given.
    """
    from cxr.data.synth import SynthConfig, check_ingestible, prepare_output
    from cxr.data.synth_render import Acquisition

    guarded(check_ingestible, size)
    acquisition = guarded(Acquisition, contrast=contrast, noise=noise, zoom=zoom, offset=offset)
    config = guarded(
        SynthConfig,
        out=out_dir,
        n_images=n_images,
        size=size,
        seed=seed,
        edition=edition,
        strength=strength,
        fainter_sex=fainter_sex,
        fainter_strength=fainter_strength,
        per_folder=per_folder,
        workers=workers,
        acquisition=acquisition,
        prevalence_power=prevalence_power,
        format=synth_format,
    )
    reused = guarded(prepare_output, config, overwrite)  # before anything is rendered
    start = time.perf_counter()
    result = reused or render_archive(config)
    seconds = time.perf_counter() - start
    if as_json:
        out.print(to_json(result), highlight=False)
        return
    if result.reused:
        console.print(f"unchanged: {result.out} already holds this synth ({result.n_images} images); nothing written")
        return
    console.print(
        f"wrote {result.n_images} images of {result.n_patients} patients, {result.n_boxes} boxes, "
        f"{result.n_test} test images to {result.out} in {seconds:.1f} s"
    )


def render_archive(config: SynthConfig, overwrite: bool = False) -> SynthResult:
    """:func:`cxr.data.synth.synthesize` with a progress bar (also used by the demo and the study)."""
    from cxr.data.synth import synthesize

    with progress() as bar:
        task = bar.add_task("rendering", total=config.n_images)
        return guarded(synthesize, config, progress=lambda n: bar.advance(task, n), overwrite=overwrite)


def inspect(
    source: Annotated[str, typer.Argument(help="A source (NIH or CheXpert layout): folder, .zip or s3:// prefix.")],
    source_format: FormatOption = None,
    uncertain: UncertainOption = "ignore",
    blank: BlankOption = "ignore",
    as_json: JsonFlag = False,
) -> None:
    """Read a source's tables and list its images; print what was found, what did not match, and how its labels
    map to the 14 findings."""
    from cxr.data.adapters import read_source
    from cxr.data.finding_map import mapping_text
    from cxr.data.label_policy import LabelPolicy
    from cxr.data.source import summarize

    policy = guarded(LabelPolicy, uncertain=uncertain, blank=blank)
    summary = summarize(guarded(read_source, source, policy, source_format))
    if as_json:
        out.print(to_json(summary), highlight=False)
        return
    out.print(source_table(summary))
    out.print(source_lines(summary), highlight=False)
    out.print(mapping_text(summary.source_format), highlight=False)


def ingest(
    source: Annotated[
        str, typer.Option("--source", help="The source (NIH or CheXpert layout): folder, .zip or s3:// prefix.")
    ],
    out_root: Annotated[
        str, typer.Option("--out", help="Dataset root (folder or s3:// prefix); versions go below it.")
    ],
    size: Annotated[list[int], typer.Option("--size", help="Shard side in px; repeat for several.")] = [256],  # noqa: B006
    dask_address: Annotated[
        str | None, typer.Option(help="A running Dask scheduler (tcp://host:8786); default: a LocalCluster.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="LocalCluster worker processes (default: all cores).")] = None,
    worker_memory: Annotated[
        str | None,
        typer.Option(
            help="Memory per LocalCluster worker, e.g. 2GiB; Dask restarts a worker above 95 % of it "
            f"(default: {format_memory(WORKER_MEMORY_LIMIT)})."
        ),
    ] = None,
    test_share: Annotated[
        float, typer.Option(help="Share of patients for test when no official list names them.")
    ] = TEST_SHARE,
    val_share: Annotated[float, typer.Option(help="Share of patients for validation, out of train/val.")] = VAL_SHARE,
    part_images: Annotated[
        int | None,
        typer.Option(
            help="Images per part on average (default: as many as fit 64 MiB of pixels at all sizes, from 8 to "
            "64); parts end at content-defined boundaries, so one holds 1 to 4 times as many."
        ),
    ] = None,
    new_source: Annotated[
        bool,
        typer.Option(
            "--new-source",
            help="OUT holds versions of another source: make this source's version LATEST there all the same.",
        ),
    ] = False,
    image_memory: Annotated[
        str | None,
        typer.Option(
            help="Memory one image may take to decode and convert, e.g. 512MiB (default 256 MiB); larger images "
            "are quarantined as over_memory_budget. Keep it well under --worker-memory."
        ),
    ] = None,
    source_format: FormatOption = None,
    uncertain: UncertainOption = "ignore",
    blank: BlankOption = "ignore",
    as_json: JsonFlag = False,
) -> None:
    """Ingest an archive into a versioned dataset: validated Parquet metadata, quarantine, boxes, uint8 shards.

    Prints the new version's digest; OUT/LATEST names it. Rerunning on an unchanged source adds nothing;
    a killed run, rerun, resumes from the parts it finished. OUT holds versions of one source (a grown
    archive at the same place is its next version); another source is refused unless --new-source.
    """
    from cxr import signals
    from cxr.data.adapters import adapter
    from cxr.data.cluster import check_workers, dask_client, parse_memory
    from cxr.data.decode import DecodeLimits
    from cxr.data.ingest import PartsToDo, publish, run_parts
    from cxr.data.label_policy import LabelPolicy
    from cxr.data.plan import IngestOptions, check_output, plan_ingest
    from cxr.reports import accounting_table

    if source_format is not None:
        guarded(adapter, source_format)
    memory = guarded(parse_memory, worker_memory) if worker_memory else WORKER_MEMORY_LIMIT
    limits = DecodeLimits()
    if image_memory is not None:
        limits = guarded(DecodeLimits, max_image_bytes=guarded(parse_memory, image_memory))
        if limits.max_image_bytes > memory // 2:
            fail(
                f"--image-memory {image_memory}: more than half the {format_memory(memory)} a worker may use "
                "(Dask restarts a worker above 95 %); raise --worker-memory too"
            )
    options = guarded(
        IngestOptions,
        sizes=tuple(size),
        test_share=test_share,
        val_share=val_share,
        part_images=part_images,
        source_format=source_format,
        label_policy=guarded(LabelPolicy, uncertain=uncertain, blank=blank),
        limits=limits,
    )
    guarded(check_workers, workers)
    guarded(check_output, source, out_root, new_source)
    plan = guarded(plan_ingest, source, out_root, options, new_source)
    if plan.existing:
        console.print(f"unchanged source: version {plan.existing} already holds it; nothing to do")
    else:
        todo = guarded(PartsToDo.of, plan)
        files = f"{plan.counts['image_files']} image files" + (
            f" and {len(plan.archives)} .tar.gz archives" if plan.archives else ""
        )
        console.print(f"{plan.counts['label_rows']} label rows, {files}; {todo.line()}")
        try:
            with (
                dask_client(dask_address, workers, announce=announce, memory_limit=memory) as client,
                progress(in_bytes=True) as bar,
            ):
                task = bar.add_task("reading and decoding", total=todo.bytes)
                guarded(run_parts, plan, client, lambda n: bar.advance(task, n))
        except KeyboardInterrupt:  # counted once the workers have stopped: what the rerun will reuse
            signals.note(PartsToDo.of(plan).kept())
            raise
    summary = guarded(publish, plan)
    if as_json:
        out.print(to_json(summary), highlight=False)
        return
    console.print(rich_table(accounting_table(summary)))
    out.print(summary.digest)


def stats(
    dataset: DatasetOption,
    dask_address: Annotated[
        str | None, typer.Option(help="A running Dask scheduler; default: Dask's threads here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print stats.json to stdout.")] = False,
) -> None:
    """Label statistics per split with Dask: frequencies, class weights, co-occurrence, views, sexes.

    Writes stats.json and charts/prevalence.png (and _log) into the version folder.
    """
    from cxr.data.stats import dataset_stats, write_stats
    from cxr.data.version import open_version
    from cxr.reports import stats_tables

    version = guarded(open_version, dataset)
    if dask_address:
        from cxr.data.cluster import dask_client

        with dask_client(dask_address, announce=announce) as client:
            result = guarded(dataset_stats, version, client)
    else:
        result = guarded(dataset_stats, version)
    written = guarded(write_stats, version, result)
    if as_json:
        out.print(result.to_json(), end="", highlight=False)
        return
    for table in stats_tables(result).values():
        out.print(rich_table(table))
    console.print("wrote " + ", ".join(written), highlight=False)


def manifest(
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset",
            help="A dataset root (its LATEST) or a version folder; repeat it for a mixed manifest of several sources.",
        ),
    ],
    strategy: Annotated[str, typer.Option(help="none | weighted | resample.")],
    out_dir: Annotated[
        str, typer.Option("--out", help="Folder or s3:// prefix for manifest.parquet and manifest.json.")
    ],
    target: Annotated[str | None, typer.Option(help="resample: balance this finding 1:1 (e.g. Pneumonia).")] = None,
    mode: Annotated[
        str, typer.Option(help="resample with a target: over (repeat the minority) or under (drop majority rows).")
    ] = "over",
    floor: Annotated[
        float, typer.Option(help="resample without a target: least share of positive draws per finding.")
    ] = 0.05,
    seed: Annotated[int, typer.Option(help="Random seed; the same inputs and seed give the same bytes.")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace another manifest that --out already holds.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print manifest.json to stdout.")] = False,
) -> None:
    """Write the exact list a training run reads: train rows balanced by the strategy, val and test untouched.

    An --out that holds another manifest is refused unless --overwrite; the same manifest again is left unchanged.
    """
    from cxr.data.manifest import ManifestConfig, build_manifest, manifest_warnings, write_manifest
    from cxr.data.version import open_version
    from cxr.findings import parse_finding
    from cxr.reports import manifest_lines, manifest_table

    versions = [guarded(open_version, d) for d in dataset]
    finding = guarded(parse_finding, target) if target else None
    config = guarded(ManifestConfig, strategy=strategy, target=finding, mode=mode, floor=floor, seed=seed)
    built = guarded(build_manifest, versions, config)
    written = guarded(write_manifest, built, out_dir, overwrite)
    for warning in manifest_warnings(built.info):
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    if as_json:
        out.print(built.info.to_json(), end="", highlight=False)
        return
    out.print(rich_table(manifest_table(built.info)))
    out.print(manifest_lines(built.info), highlight=False)
    if written:
        console.print(f"wrote {out_dir}: manifest.parquet, manifest.json, charts/balance.png", highlight=False)
    else:
        console.print(f"unchanged: {out_dir} already holds manifest {built.info.digest}", highlight=False)
    out.print(built.info.digest)


def gc(
    root: Annotated[str, typer.Argument(help="A datasets root (the --out of cxr ingest): folder or s3:// prefix.")],
    keep: Annotated[
        int, typer.Option(help="Newest complete versions kept, besides LATEST and every version a model needs.")
    ] = KEEP_NEWEST,
    apply: Annotated[bool, typer.Option("--apply", help="Remove. Without it: a dry run that only reports.")] = False,
    cache: Annotated[
        str | None, typer.Option(help="The local shard cache to clean as well (default: CXR_CACHE or ~/.cache/cxr).")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow store whose registered models say what is needed (default: MLFLOW_TRACKING_URI)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Remove dataset versions, parts and cached shards that no registered model needs (a dry run unless --apply).

    Kept: LATEST, the --keep newest, what a model or running training needs, LATEST's parts, recent work.
    """
    from cxr.data.gc import check_root, collect_garbage
    from cxr.learn.shards import cache_root
    from cxr.redact import redact
    from cxr.tracking.mlflow_run import tracking_uri as default_uri
    from cxr.tracking.needed import needed_versions

    guarded(check_root, root, keep)  # before the tracking store is opened
    uri = tracking_uri or default_uri()
    needed = guarded(needed_versions, uri)
    report = guarded(collect_garbage, root, needed, keep, cache or str(cache_root()), apply)
    if as_json:
        out.print(to_json(report), highlight=False)
        return
    console.print(
        f"models read from {redact(uri)}: {sum(len(v) for v in needed.by.values())} need "
        f"{len(needed.by)} dataset version(s)",
        highlight=False,
    )
    kept = Table(title="kept", title_justify="left")
    for column in ("version", "why"):
        kept.add_column(column)
    for version in report.kept:
        kept.add_row(version.digest, "; ".join(version.reasons))
    out.print(kept)
    if report.removals:
        removed = Table(title="removed" if report.applied else "would remove", title_justify="left")
        for column in ("kind", "what", "bytes", "why"):
            removed.add_column(column, justify="right" if column == "bytes" else "left")
        for r in report.removals:
            removed.add_row(r.kind, r.url, f"{r.bytes:,}", r.reason)
        out.print(removed)
    counts = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in report.counts().items()) or "nothing"
    verb = "freed" if report.applied else "would free"
    tail = "" if report.applied else " (dry run: nothing removed; --apply removes)"
    out.print(f"{verb} {report.bytes:,} bytes: {counts}{tail}", highlight=False)
