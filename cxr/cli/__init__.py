"""The ``cxr`` command line. Each command is a thin shell over a ``cxr`` library function."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    name="cxr",
    help="Chest X-ray classifiers on imbalanced archives: synth, ingest, stats, manifest, train, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
if not out.is_terminal:  # piped or captured: tables at 80 columns would wrap every row
    out = Console(soft_wrap=True, width=140)


@app.callback()
def _offline_defaults() -> None:
    """Quiet, offline defaults for the services cxr starts (each can still be overridden by the user)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _run(fn, *args, **kwargs) -> Any:  # noqa: ANN001
    """Call a library function; turn expected failures into one clear line and exit code 2."""
    from cxr.labels import NihFormatError
    from cxr.storage import StorageError, UnsafePathError

    try:
        return fn(*args, **kwargs)
    except (NihFormatError, UnsafePathError, ValueError) as err:
        _fail(str(err))
    except FileNotFoundError as err:
        _fail(f"not found: {err}")
    except PermissionError as err:
        _fail(f"permission denied: {err}")
    except StorageError as err:
        _fail(str(err))
    except Exception as err:
        if type(err).__module__.startswith("mlflow"):  # e.g. an unknown model name or alias
            _fail(f"MLflow: {err}")
        raise


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and os.environ.get("CXR_PROGRESS") != "1",
    )


@app.command()
def synth(
    out_dir: Annotated[str, typer.Option("--out", help="Folder or s3:// prefix to write the dataset to.")],
    n_images: Annotated[int, typer.Option("--n-images", help="Number of images.")] = 2000,
    size: Annotated[int, typer.Option(help="Image side in px (the release's PNGs are 1024).")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    edition: Annotated[str, typer.Option(help="Label table edition: 2017 (trailing commas) or v2020.")] = "v2020",
    strength: Annotated[float, typer.Option(help="Contrast of each finding's sign (0: unlearnable).")] = 1.0,
    per_folder: Annotated[int, typer.Option(help="Images per images_NNN/images folder.")] = 10_000,
    workers: Annotated[int, typer.Option(help="Rendering processes (output does not depend on it).")] = os.cpu_count() or 1,
    contrast: Annotated[float, typer.Option(help="Anatomy contrast factor (a shifted source: e.g. 0.7).")] = 1.0,
    noise: Annotated[float, typer.Option(help="Noise factor (e.g. 1.8).")] = 1.0,
    zoom: Annotated[float, typer.Option(help="Body scale factor (e.g. 0.9).")] = 1.0,
    offset: Annotated[float, typer.Option(help="Body shift right and down, share of the side (e.g. 0.05).")] = 0.0,
    prevalence_power: Annotated[float, typer.Option(help="Label-set frequencies to this power (< 1: rare findings commoner).")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Make a synthetic dataset in the exact NIH layout, with real NIH prevalence and co-occurrence."""
    from cxr.synth import SynthConfig, synthesize
    from cxr.synth_render import Acquisition

    acquisition = _run(Acquisition, contrast=contrast, noise=noise, zoom=zoom, offset=offset)
    config = _run(
        SynthConfig, out=out_dir, n_images=n_images, size=size, seed=seed, edition=edition,  # type: ignore[arg-type]
        strength=strength, per_folder=per_folder, workers=workers, acquisition=acquisition, prevalence_power=prevalence_power,
    )
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("rendering", total=n_images)
        result = _run(synthesize, config, progress=lambda n: progress.advance(task, n))
    seconds = time.perf_counter() - start
    if as_json:
        out.print_json(json.dumps({**{k: v for k, v in result.__dict__.items()}, "seconds": round(seconds, 2)}))
        return
    console.print(
        f"wrote {result.n_images} images of {result.n_patients} patients, {result.n_boxes} boxes, "
        f"{result.n_test} test images to {result.out} in {seconds:.1f} s"
    )


def _summary_table(summary: dict) -> Table:
    table = Table(title=f"{summary['root']} ({summary['edition']} label table)", title_justify="left")
    table.add_column("finding")
    table.add_column("images", justify="right")
    table.add_column("prevalence", justify="right")
    n = max(summary["rows_accepted"], 1)
    for finding, count in sorted(summary["positives"].items(), key=lambda kv: -kv[1]):
        table.add_row(finding, str(count), f"{100 * count / n:.2f} %")
    table.add_row("No Finding", str(summary["no_finding"]), f"{100 * summary['no_finding'] / n:.2f} %", style="dim")
    return table


@app.command()
def inspect(
    source: Annotated[str, typer.Argument(help="An archive in the NIH layout: folder or s3:// prefix.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Read an NIH-layout archive's tables and list its images; print what was found and what did not match."""
    from cxr.source import read_source, summarize

    summary = summarize(_run(read_source, source))
    if as_json:
        out.print_json(json.dumps(summary))
        return
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    out.print(_summary_table(summary))
    quarantined = ", ".join(f"{k} {v}" for k, v in summary["rows_quarantined"].items()) or "none"
    out.print(
        f"rows: {summary['rows_in']} read, {summary['rows_accepted']} accepted, quarantined: {quarantined}\n"
        f"patients: {summary['patients']}   image files: {summary['image_files']}   "
        f"rows without a file: {summary['rows_without_file']}   files without a row: {summary['files_without_row']}\n"
        f"boxes: {summary['boxes']}   split lists: train_val {summary['train_val_listed']}, test {summary['test_listed']}",
        highlight=False,
    )


@app.command()
def ingest(
    source: Annotated[str, typer.Option("--source", help="The NIH-layout archive: folder or s3:// prefix.")],
    out_root: Annotated[str, typer.Option("--out", help="Dataset root (folder or s3:// prefix); versions go below it.")],
    size: Annotated[list[int], typer.Option("--size", help="Shard side in px; repeat for several.")] = [256],  # noqa: B006
    dask_address: Annotated[str | None, typer.Option(help="A running Dask scheduler (tcp://host:8786); default: a LocalCluster.")] = None,
    workers: Annotated[int | None, typer.Option(help="LocalCluster worker processes (default: all cores).")] = None,
    test_share: Annotated[float, typer.Option(help="Share of patients for test when no official list names them.")] = 0.2,
    val_share: Annotated[float, typer.Option(help="Share of patients for validation.")] = 0.1,
    part_images: Annotated[int | None, typer.Option(help="Images per part (default: as many as fit 64 MB of pixels, at most 64).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Ingest an archive into a versioned dataset: validated Parquet metadata, quarantine, boxes, uint8 shards.

    Prints the new version's digest; OUT/LATEST names it. Rerunning on an unchanged source adds nothing;
    a killed run, rerun, resumes from the parts it finished.
    """
    from cxr.cluster import dask_client
    from cxr.ingest import IngestOptions, plan_ingest, publish, run_parts

    options = _run(IngestOptions, sizes=tuple(size), test_share=test_share, val_share=val_share, part_images=part_images)
    plan = _run(plan_ingest, source, out_root, options)
    if plan.existing:
        console.print(f"unchanged source: version {plan.existing} already holds it; nothing to do")
    else:
        total = sum(len(p.images) for p in plan.parts)
        console.print(f"{plan.counts['label_rows']} label rows, {plan.counts['image_files']} image files; decoding {total} images in {len(plan.parts)} parts")
        with dask_client(dask_address, workers, announce=lambda line: console.print(line, highlight=False)) as client:
            with _progress() as progress:
                task = progress.add_task("decoding", total=total)
                _run(run_parts, plan, client, lambda n: progress.advance(task, n))
    result = _run(publish, plan)
    info = result.version.info
    if as_json:
        out.print_json(json.dumps({"digest": result.version.digest, "path": result.version.path, "created": result.created,
                                   "splits": info["splits"], "accounting": result.accounting}))  # fmt: skip
        return
    _print_accounting(result.accounting, info["splits"])
    out.print(result.version.digest)


def _print_accounting(accounting: dict, splits: dict) -> None:
    table = Table(title="ingest", title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("inputs (label rows + files no row names)", str(accounting["inputs"]))
    table.add_row("accepted", str(accounting["accepted"]))
    table.add_row("quarantined", str(accounting["quarantined"]))
    for reason, n in accounting["quarantined_by_reason"].items():
        table.add_row(f"  {reason}", str(n), style="yellow")
    boxes = accounting["boxes"]
    table.add_row("boxes kept / quarantined", f"{boxes['accepted']} / {boxes['quarantined']}")
    table.add_row("splits", "  ".join(f"{k} {v}" for k, v in splits.items()))
    console.print(table)


@app.command()
def stats(
    dataset: Annotated[str, typer.Option("--dataset", help="A dataset root (its LATEST) or a version folder.")],
    dask_address: Annotated[str | None, typer.Option(help="A running Dask scheduler; default: Dask's threads here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print stats.json to stdout.")] = False,
) -> None:
    """Label statistics per split with Dask: frequencies, class weights, co-occurrence, views, sexes.

    Writes stats.json and charts/prevalence.png (and _log) into the version folder.
    """
    from cxr.dataset import open_version
    from cxr.stats import dataset_stats, to_json, write_stats

    version = _run(open_version, dataset)
    if dask_address:
        from cxr.cluster import dask_client

        with dask_client(dask_address, announce=lambda line: console.print(line, highlight=False)) as client:
            result = _run(dataset_stats, version, client)
    else:
        result = _run(dataset_stats, version)
    written = _run(write_stats, version, result)
    if as_json:
        out.print(to_json(result), end="", highlight=False)
        return
    for name, split in result["splits"].items():
        out.print(_stats_table(name, split))
    console.print("wrote " + ", ".join(written), highlight=False)


def _stats_table(name: str, split: dict) -> Table:
    table = Table(title=f"{name}: {split['n']} images, {split['no_finding']} without a finding", title_justify="left")
    for column in ("finding", "n_pos", "n_neg", "freq_pos", "w_pos", "w_neg"):
        table.add_column(column, justify="left" if column == "finding" else "right")
    for finding, s in split["findings"].items():
        table.add_row(finding, str(s["n_pos"]), str(s["n_neg"]), f"{s['freq_pos']:.4f}", f"{s['w_pos']:.4f}", f"{s['w_neg']:.4f}")
    return table


@app.command()
def manifest(
    dataset: Annotated[str, typer.Option("--dataset", help="A dataset root (its LATEST) or a version folder.")],
    strategy: Annotated[str, typer.Option(help="none | weighted | resample.")],
    out_dir: Annotated[str, typer.Option("--out", help="Folder or s3:// prefix for manifest.parquet and manifest.json.")],
    target: Annotated[str | None, typer.Option(help="resample: balance this finding 1:1 (e.g. Pneumonia).")] = None,
    mode: Annotated[str, typer.Option(help="resample with a target: over (repeat the minority) or under (drop majority rows).")] = "over",
    floor: Annotated[float, typer.Option(help="resample without a target: least share of positive draws per finding.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Random seed; the same inputs and seed give the same bytes.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print manifest.json to stdout.")] = False,
) -> None:
    """Write the exact list a training run reads: train rows balanced by the strategy, val and test untouched."""
    from cxr.dataset import open_version
    from cxr.findings import parse_finding
    from cxr.manifest import ManifestConfig, build_manifest, write_manifest

    version = _run(open_version, dataset)
    config = _run(ManifestConfig, strategy=strategy, target=_run(parse_finding, target) if target else None,
                  mode=mode, floor=floor, seed=seed)  # fmt: skip
    built = _run(build_manifest, version, config)
    _run(write_manifest, built, out_dir)
    info = built.info
    if as_json:
        out.print_json(json.dumps(info))
        return
    table = Table(title=f"manifest {info['digest']} ({info['strategy']}) of dataset {version.digest}", title_justify="left")
    for column in ("finding", "train share before", "after", "distinct positive images"):
        table.add_column(column, justify="left" if column == "finding" else "right")
    for finding in info["findings"]:
        table.add_row(finding, f"{100 * info['train_prevalence']['before'][finding]:.2f} %",
                      f"{100 * info['train_prevalence']['after'][finding]:.2f} %",
                      str(info["reuse"]["distinct_positive_images"][finding]))  # fmt: skip
    out.print(table)
    reuse = info["reuse"]
    out.print(
        "rows/draws: " + "  ".join(f"{k} {v['rows']}/{v['draws']}" for k, v in info["splits"].items())
        + f"\nmost reused training image: {reuse['most_repeated_image']} x{reuse['max_repeat']}; "
        f"{reuse['rows_repeated']} rows repeated, {reuse['rows_dropped']} dropped",
        highlight=False,
    )
    console.print(f"wrote {out_dir}: manifest.parquet, manifest.json, charts/balance.png", highlight=False)
    out.print(info["digest"])


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    manifest_url: Annotated[str, typer.Option("--manifest", help="Manifest folder (manifest.parquet + manifest.json).")],
    output_dir: Annotated[str, typer.Option(help="Where checkpoint.pt, model.pt and metrics.jsonl go.")] = "runs/train",
    model: Annotated[str, typer.Option(help="densenet121 | resnet50 | efficientnet_b0 | small.")] = "densenet121",
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 10,
    image_size: Annotated[int | None, typer.Option(help="Model input side in px (default: the shard size).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per process and step.")] = 32,
    nproc: Annotated[int, typer.Option(help="Processes on this machine; >1 launches torchrun (DDP).")] = 1,
    weights: Annotated[str | None, typer.Option(help="torchvision weights file for the backbone.")] = None,
    init_from: Annotated[str | None, typer.Option(help="A model.pt of an earlier run to start from.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT_DIR/checkpoint.pt.")] = False,
) -> None:
    """Train a classifier on a manifest; any other flag of `python -m cxr.train` passes through (see --help there).

    With --nproc N > 1 this runs `torchrun --standalone --nproc-per-node N -m cxr.train ...`; for several
    machines run torchrun yourself (README).
    """
    import subprocess

    args = ["--manifest", manifest_url, "--output-dir", output_dir, "--model", model, "--epochs", str(epochs),
            "--batch-size", str(batch_size)]  # fmt: skip
    for flag, value in (("--image-size", image_size), ("--weights", weights), ("--init-from", init_from)):
        if value is not None:
            args += [flag, str(value)]
    if resume:
        args.append("--resume")
    args += list(ctx.args)
    if nproc < 1:
        _fail(f"--nproc must be >= 1, got {nproc}")
    if nproc == 1:
        from cxr.train import TrainConfig, get_args_parser
        from cxr.train import main as train_main

        config = _run(lambda: TrainConfig.from_dict(vars(get_args_parser().parse_args(args))))
        result = _run(train_main, config)
        console.print(f"val mean AUROC {result['val_mean_auroc']}; model: {result['model_url']}", highlight=False)
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "cxr.train", *args]
    console.print("running: " + " ".join(command[1:]), highlight=False)
    code = subprocess.call(command)
    if code:
        _fail(f"torchrun exited with {code}")


@app.command()
def evaluate(
    model_uri: Annotated[str, typer.Option("--model", help="A model.pt (local or s3://).")],
    dataset: Annotated[str, typer.Option("--dataset", help="A dataset root (its LATEST) or a version folder.")],
    split: Annotated[str, typer.Option(help="The split to evaluate.")] = "test",
    threshold_rule: Annotated[str, typer.Option(help="youden | specificity (thresholds chosen on val).")] = "youden",
    specificity: Annotated[float, typer.Option(help="Target specificity for --threshold-rule specificity.")] = 0.9,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the AUROC interval.")] = 200,
    out_dir: Annotated[str | None, typer.Option("--out", help="Write evaluation.json, curves.png, heatmaps/ here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Per-finding AUROC (95 % bootstrap interval), AUPRC, sensitivity and specificity, and CAM localization."""
    from cxr.evaluate import evaluate_model

    result = _run(evaluate_model, model_uri, dataset, split, threshold_rule, specificity, bootstrap, 0, out_dir)
    if as_json:
        out.print_json(json.dumps(result))
        return
    _print_evaluation(result)


@app.command()
def predict(
    images: Annotated[list[str], typer.Argument(help="PNG files (local or s3://).")],
    model_uri: Annotated[str, typer.Option("--model", help="A model.pt (local or s3://).")],
    heatmaps: Annotated[str | None, typer.Option(help="Write heatmap overlays (PNG) to this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """The 14 probabilities per image; for findings above threshold, a box (1024 px frame) and the extent."""
    from cxr.decode import ImageRejected
    from cxr.predict import predict_images

    try:
        results = _run(predict_images, images, model_uri, heatmaps)
    except ImageRejected as err:
        _fail(f"{err.reason}: {err.detail}")
    if as_json:
        out.print_json(json.dumps(results))
        return
    for r in results:
        table = Table(title=r["image"], title_justify="left")
        for column in ("finding", "probability", "above threshold", "box (x, y, w, h; 1024 px)", "extent"):
            table.add_column(column, justify="left" if column == "finding" else "right")
        above = {f["finding"]: f for f in r["findings"]}
        for finding, p in r["probabilities"].items():
            hit = above.get(finding)
            table.add_row(finding, f"{p:.3f}", "yes" if hit else "", ", ".join(f"{v:.0f}" for v in hit["box_1024"]) if hit else "",
                          f"{100 * hit['extent']:.1f} %" if hit else "")  # fmt: skip
        out.print(table)


@app.command()
def lineage(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the chain as JSON.")] = False,
) -> None:
    """What made a model: model version -> run -> manifest -> dataset version -> source archive."""
    from cxr.lineage import format_chain
    from cxr.lineage import lineage as chain_of

    chain = _run(chain_of, model_uri)
    if as_json:
        out.print_json(json.dumps(chain))
        return
    out.print(format_chain(chain), highlight=False)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps its data.")] = Path(".cxr/demo"),
    n_images: Annotated[int, typer.Option("--n-images", help="Synthetic images to make.")] = 1500,
    size: Annotated[int, typer.Option(help="Synthetic image side in px.")] = 256,
    shard_size: Annotated[int, typer.Option(help="Shard side in px, and the model's input.")] = 64,
    epochs: Annotated[int, typer.Option(help="Training epochs of the small CPU model.")] = 6,
    strategy: Annotated[str, typer.Option(help="Manifest strategy: none | weighted | resample.")] = "weighted",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Dask LocalCluster workers (default: all cores).")] = None,
) -> None:
    """The main job on embedded defaults: a synthetic NIH archive (made once), then the retrain flow on CPU.

    The Prefect flow `retrain` runs ingest (Dask) -> stats -> manifest -> train (torchrun, MLflow) ->
    evaluate + localize -> register -> gate; a second demo reuses every finished step.
    """
    from cxr.synth import SynthConfig, synthesize
    from cxr.tracking import tracking_uri

    source = workdir / "source"
    if not (source / "Data_Entry_2017_v2020.csv").exists():
        console.print(f"[bold]synth[/]: a synthetic NIH archive of {n_images} images in {source}")
        config = SynthConfig(out=str(source), n_images=n_images, size=size, seed=seed, workers=os.cpu_count() or 1)
        with _progress() as progress:
            task = progress.add_task("rendering", total=n_images)
            _run(synthesize, config, progress=lambda n: progress.advance(task, n))
    else:
        console.print(f"[bold]synth[/]: reusing the synthetic archive in {source}")
    uri = tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the training subprocess tracks to the same store
    console.print(f"[bold]retrain flow[/] (Prefect): {source} -> {workdir}; MLflow at {uri}")
    from flows.retrain import retrain

    summary = _run(retrain, source=str(source.resolve()), workdir=str(workdir.resolve()), sizes=[shard_size],
                   strategy=strategy, epochs=epochs, seed=seed, registered_model="cxr-demo", experiment="cxr-demo",
                   workers=workers)  # fmt: skip
    evaluation = json.loads(Path(summary["model_url"]).with_name("evaluation").joinpath("evaluation.json").read_text())
    from cxr.dataset import open_version

    out.print(_version_table(open_version(str(workdir.resolve() / "datasets" / summary["dataset_digest"]))))
    out.print(
        f"dataset {summary['dataset_digest']} ({'new' if summary['dataset_created'] else 'unchanged'}, "
        f"{summary['images_decoded']} images decoded); manifest {summary['manifest_digest']} ({summary['strategy']}); "
        f"MLflow run {summary['run_id']}",
        highlight=False,
    )
    _print_evaluation(evaluation)
    verdict = "promoted to champion" if summary["promoted"] else "stays challenger"
    out.print(f"model {summary['registered_model']} version {summary['model_version']}: {verdict} ({'; '.join(summary['gate_reasons'])})", highlight=False)
    bin_dir = Path(sys.executable).parent
    if uri.startswith("sqlite"):
        mlflow_ui = f"{bin_dir / 'mlflow'} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000  (then http://127.0.0.1:5000)"
    else:
        mlflow_ui = uri
    prefect_api = os.environ.get("PREFECT_API_URL")
    if prefect_api:
        prefect_ui = prefect_api.removesuffix("/api")
    else:
        prefect_ui = f"{bin_dir / 'prefect'} server start --host 127.0.0.1  (then http://127.0.0.1:4200)"
    out.print(
        f"\nlineage:    {bin_dir / 'cxr'} lineage models:/cxr-demo@champion\n"
        f"MLflow UI:  {mlflow_ui}\n"
        f"Prefect UI: {prefect_ui}\n"
        f"evaluation: {Path(summary['model_url']).with_name('evaluation')} (evaluation.json, curves.png, heatmaps/)",
        highlight=False,
    )


def _print_evaluation(result: dict) -> None:
    table = Table(title=f"test split (n = {result['n']}): mean AUROC {result['mean_auroc']:.3f}", title_justify="left")
    for column in ("finding", "pos", "AUROC", "95 % CI", "AUPRC", "sens", "spec", "CAM T(IoBB)>0.1 / random"):
        table.add_column(column, justify="left" if column == "finding" else "right")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for finding, m in result["findings"].items():
        loc, rnd = result["localization"].get(finding), result["localization_random"].get(finding)
        ci = "-" if not m["auroc_ci95"] else f"{m['auroc_ci95'][0]:.2f}-{m['auroc_ci95'][1]:.2f}"
        where = "-" if not loc else f"{loc['T0.1']:.2f} / {rnd['T0.1']:.2f} (n={loc['n']})"
        table.add_row(finding, str(m["n_pos"]), fmt(m["auroc"]), ci, fmt(m["auprc"]), fmt(m["sensitivity"]), fmt(m["specificity"]), where)
    out.print(table)


def _version_table(version) -> Table:  # noqa: ANN001
    """Positives per finding and split, from the version's metadata."""
    import pyarrow.compute as pc

    from cxr.findings import FINDING_COLUMNS, FINDINGS

    metadata = version.metadata(columns=["split", *FINDING_COLUMNS])
    splits = ("train", "val", "test")
    masks = {s: pc.equal(metadata["split"], s) for s in splits}
    counts = {s: pc.sum(masks[s]).as_py() or 0 for s in splits}
    table = Table(title=f"dataset {version.digest}: positives per split", title_justify="left")
    table.add_column("finding")
    for s in splits:
        table.add_column(f"{s} ({counts[s]})", justify="right")
    for finding, column in zip(FINDINGS, FINDING_COLUMNS, strict=True):
        cells = []
        for s in splits:
            n = pc.sum(pc.and_(masks[s], metadata[column])).as_py() or 0
            cells.append(f"{n} ({100 * n / max(counts[s], 1):.1f} %)")
        table.add_row(finding, *cells)
    return table


@app.command()
def deploy(
    source: Annotated[str, typer.Option("--source", help="The archive the scheduled runs read.")],
    workdir: Annotated[str, typer.Option("--workdir", help="Where datasets, manifests and runs go.")],
    cron: Annotated[str, typer.Option(help="When to retrain (cron, UTC).")] = "0 2 * * *",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "retrain-scheduled",
    pool: Annotated[str, typer.Option(help="Process work pool (created if missing).")] = "cxr-process",
    model: Annotated[str, typer.Option(help="Model to train.")] = "densenet121",
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 10,
    size: Annotated[int, typer.Option(help="Shard side and model input in px.")] = 224,
    registered_model: Annotated[str, typer.Option(help="Registry name.")] = "cxr-classifier",
    workers: Annotated[int | None, typer.Option(help="Dask LocalCluster workers for the data steps.")] = None,
) -> None:
    """Register the retrain flow as a cron deployment on the Prefect server at PREFECT_API_URL."""
    if not os.environ.get("PREFECT_API_URL"):
        _fail("PREFECT_API_URL is not set: start a server (`cxr stack up`, then `eval \"$(cxr stack env)\"`)")
    from flows.deploy import deploy_retrain

    parameters = {"source": source, "workdir": workdir, "model": model, "epochs": epochs, "sizes": [size],
                  "registered_model": registered_model, "workers": workers}  # fmt: skip
    deployment_id = _run(deploy_retrain, parameters, name, pool, cron)
    console.print(f"deployment retrain/{name} ({deployment_id}) on pool {pool}, cron '{cron}' UTC", highlight=False)
    console.print(f"start a worker: {Path(sys.executable).parent / 'prefect'} worker start --pool {pool}", highlight=False)
    out.print(str(deployment_id))


@app.command()
def study(
    workdir: Annotated[Path, typer.Option(help="Where the study keeps its data and report.")] = Path(".cxr/study"),
    source: Annotated[str | None, typer.Option(help="An NIH-layout archive; default: a synthetic one made in WORKDIR.")] = None,
    n_images: Annotated[int, typer.Option("--n-images", help="Synthetic images, without --source.")] = 3000,
    shifted_images: Annotated[int, typer.Option(help="Images of the shifted source.")] = 1000,
    shard_size: Annotated[int, typer.Option(help="Shard side and model input in px.")] = 64,
    strategy: Annotated[list[str], typer.Option("--strategy", help="Repeat for several.")] = ["none", "weighted", "resample"],  # noqa: B006
    seed: Annotated[list[int], typer.Option("--seed", help="Repeat for several (3 or more for a spread).")] = [0, 1, 2],  # noqa: B006
    model: Annotated[str, typer.Option(help="Model for every run.")] = "small",
    epochs: Annotated[int, typer.Option(help="Epochs of every run (the same budget for all).")] = 6,
    workers: Annotated[int | None, typer.Option(help="Dask LocalCluster workers.")] = None,
) -> None:
    """The imbalance study: every strategy and seed, in distribution and on a shifted source; a report."""
    from cxr.study import StudyConfig
    from cxr.synth import SynthConfig, synthesize
    from cxr.tracking import tracking_uri

    _run(StudyConfig, strategies=tuple(strategy), seeds=tuple(seed), model=model, epochs=epochs)  # refuse bad settings first

    if source is None:
        source_dir = workdir / "source"
        if not (source_dir / "Data_Entry_2017_v2020.csv").exists():
            console.print(f"synth: a synthetic NIH archive of {n_images} images in {source_dir}")
            _run(synthesize, SynthConfig(out=str(source_dir), n_images=n_images, size=128, seed=0, workers=os.cpu_count() or 1))
        source = str(source_dir.resolve())
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()
    from flows.study import study as study_flow

    result = _run(study_flow, source=source, workdir=str(workdir.resolve()), sizes=[shard_size], shifted_images=shifted_images,
                  strategies=list(strategy), seeds=list(seed), model=model, epochs=epochs, workers=workers)  # fmt: skip
    out.print("\n".join(f"- {line}" for line in result["verdict"]), highlight=False)
    console.print(f"report: {workdir / 'study' / 'imbalance-study.md'}; MLflow parent run {result['parent_run_id']}", highlight=False)


stack_app = typer.Typer(help="The local stack on 127.0.0.1: S3 (SeaweedFS), MLflow (SQLite, artifacts on S3), Prefect.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(stack_app, name="stack")
StackDir = Annotated[Path, typer.Option("--dir", help="Where the stack keeps its data, logs and state.")]


@stack_app.command("up")
def stack_up(root: StackDir = Path(".cxr/stack")) -> None:
    """Start the three services (reusing running ones) and wait until each answers its health check."""
    from cxr.stack import env_lines, up

    state = _run(up, root)
    for name, service in state["services"].items():
        console.print(f"{name:8} {service['url']}  (pid {service['pid']})", highlight=False)
    console.print(f"logs in {Path(state['root']) / 'logs'}; point your shell at the stack with:", highlight=False)
    out.print("\n".join(env_lines(root)), highlight=False)


@stack_app.command("env")
def stack_env(root: StackDir = Path(".cxr/stack")) -> None:
    """Shell lines for `eval "$(cxr stack env)"` (credentials are sourced from a file, never printed)."""
    from cxr.stack import env_lines

    if not (root / "stack.json").exists():
        _fail(f"no stack running from {root}; run `cxr stack up`")
    out.print("\n".join(env_lines(root)), highlight=False)


@stack_app.command("status")
def stack_status(root: StackDir = Path(".cxr/stack"), as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Whether each service's process lives and answers its health check."""
    from cxr.stack import status

    report = status(root)
    if as_json:
        out.print_json(json.dumps(report))
        return
    if not report["services"]:
        out.print("the stack is not running")
        raise typer.Exit(1)
    for name, service in report["services"].items():
        state = "up" if service["alive"] and service["healthy"] else "alive, not answering" if service["alive"] else "down"
        out.print(f"{name:8} {state:22} {service['url']}", highlight=False)
    if not report["running"]:
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down(root: StackDir = Path(".cxr/stack")) -> None:
    """Stop every service of the stack."""
    from cxr.stack import down

    stopped = down(root)
    console.print("stopped: " + (", ".join(stopped) or "nothing was running"), highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
