"""``cxr demo | deploy | study``: the Prefect flows. The only module of the library that imports flows/."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.console import console, fail, guarded, out, require_folder
from cxr.cli.data import render_archive
from cxr.cli.tables import rich_table
from flows.deploy import DEFAULTS

BIN = Path(sys.executable).parent


def _synthetic_source(folder: Path, n_images: int, size: int, seed: int, strength: float = 1.0) -> Path:
    """A synthetic archive in ``folder``, made once and reused (``strength``: of the findings' signs)."""
    from cxr.data.synth import SynthConfig

    if (folder / "Data_Entry_2017_v2020.csv").exists():
        console.print(f"[bold]synth[/]: reusing the synthetic archive in {folder}")
    else:
        console.print(f"[bold]synth[/]: a synthetic NIH archive of {n_images} images in {folder}")
        render_archive(
            SynthConfig(
                out=str(folder), n_images=n_images, size=size, seed=seed, strength=strength, workers=os.cpu_count() or 1
            )
        )
    return folder.resolve()


def _track_here() -> str:
    """The tracking URI in force, exported so that training subprocesses track to the same store."""
    from cxr.tracking.mlflow_run import tracking_uri

    uri = tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def ui_hints(tracking_uri: str, prefect_api: str | None, prefect_home: Path | None = None) -> tuple[str, str]:
    """How to open the MLflow and Prefect UIs: the servers in use, or the commands that serve the local stores
    (``prefect_home``: where the command's own Prefect server kept its database)."""
    if tracking_uri.startswith("sqlite"):
        mlflow_ui = f"{BIN / 'mlflow'} ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
        mlflow_ui += "  (then http://127.0.0.1:5000)"
    else:
        mlflow_ui = tracking_uri
    if prefect_api:
        return mlflow_ui, prefect_api.removesuffix("/api")
    home = f"PREFECT_HOME={prefect_home} " if prefect_home else ""
    return mlflow_ui, f"{home}{BIN / 'prefect'} server start --host 127.0.0.1  (then http://127.0.0.1:4200)"


@contextmanager
def _rerun_hint(command: str) -> Iterator[None]:
    """On an interruption, say what the same command does next (for the one line ``cxr`` prints)."""
    try:
        yield
    except KeyboardInterrupt:
        from cxr.signals import note

        note(f"the same `{command}` again reuses every finished step and trains what did not finish")
        raise


@contextmanager
def _flow_api(workdir: Path) -> Iterator[Path | None]:
    """The Prefect API the command's flow reports to: PREFECT_API_URL's, else a server of the command's own in
    a process group of its own, so that a Ctrl-C stops the flow, which records its crash there, and not the
    server first (:mod:`cxr.services.flowserver`). Yields where that server kept its database, if it ran."""
    from cxr.services.flowserver import flow_server
    from flows.api import reporting_to

    with flow_server(workdir / "flow-server") as own, reporting_to(own[0] if own else None):
        yield own[1] if own else None


def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps its data.")] = Path(".cxr/demo"),
    n_images: Annotated[int, typer.Option("--n-images", help="Synthetic images to make.")] = 1500,
    size: Annotated[int, typer.Option(help="Synthetic image side in px.")] = 256,
    shard_size: Annotated[int, typer.Option(help="Shard side in px, and the model's input.")] = 64,
    image_size: Annotated[int | None, typer.Option(help="Model input side in px (default: the shard size).")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs of the small CPU model.")] = 6,
    batch_size: Annotated[int, typer.Option(help="Images per training step.")] = 32,
    strategy: Annotated[str, typer.Option(help="Manifest strategy: none | weighted | resample.")] = "weighted",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Dask LocalCluster workers (default: all cores).")] = None,
) -> None:
    """The main job on embedded defaults: a synthetic NIH archive (made once), then the retrain flow on CPU.

    The Prefect flow `retrain` runs ingest (Dask) -> stats -> manifest -> train (torchrun, MLflow) ->
    evaluate + localize -> register -> gate -> model card; a second demo reuses every finished step.
    """
    from cxr.data.synth import SynthConfig
    from cxr.data.version import open_version
    from cxr.reports import evaluation_table, positives_table
    from flows.retrain import check_parameters, retrain

    require_folder(workdir, "--workdir")
    parameters = {
        "sizes": [shard_size],
        "strategy": strategy,
        "epochs": epochs,
        "batch_size": batch_size,
        "image_size": image_size,
        "seed": seed,
        "registered_model": "cxr-demo",
        "experiment": "cxr-demo",
        "workers": workers,
    }
    guarded(check_parameters, source="", workdir="", **parameters)  # refuse bad settings before any work
    guarded(SynthConfig, out=str(workdir / "source"), n_images=n_images, size=size, seed=seed)
    source = _synthetic_source(workdir / "source", n_images, size, seed)
    uri = _track_here()
    console.print(f"[bold]retrain flow[/] (Prefect): {source} -> {workdir}; MLflow at {uri}")
    with _flow_api(workdir) as prefect_home, _rerun_hint("cxr demo"):
        summary = guarded(retrain, source=str(source), workdir=str(workdir.resolve()), **parameters)
    out.print(rich_table(positives_table(open_version(summary.ingest.path))))
    out.print(summary.headline(), highlight=False)
    out.print(rich_table(evaluation_table(summary.evaluation)))
    r = summary.registration
    out.print(f"model {r.name} version {r.version}: {r.verdict} ({'; '.join(r.reasons)})", highlight=False)
    mlflow_ui, prefect_ui = ui_hints(uri, os.environ.get("PREFECT_API_URL"), prefect_home)
    evaluation_dir = Path(summary.trained.model_url).with_name("evaluation")
    out.print(
        f"\nlineage:    {BIN / 'cxr'} lineage models:/cxr-demo@champion\n"
        f"MLflow UI:  {mlflow_ui}\n"
        f"Prefect UI: {prefect_ui}\n"
        f"run folder: {Path(summary.trained.model_url).parent}\n"
        f"evaluation: {evaluation_dir} (evaluation.json, curves.png, heatmaps/)\n"
        f"model card: {summary.card}",
        highlight=False,
    )


def deploy(
    source: Annotated[str, typer.Option("--source", help="The archive the scheduled runs read.")],
    workdir: Annotated[str, typer.Option("--workdir", help="Where datasets, manifests and runs go.")],
    cron: Annotated[str, typer.Option(help="When to retrain (cron, UTC).")] = DEFAULTS.cron,
    name: Annotated[str, typer.Option(help="Deployment name.")] = DEFAULTS.name,
    pool: Annotated[str, typer.Option(help="Process work pool (created if missing).")] = DEFAULTS.pool,
    model: Annotated[str, typer.Option(help="Model to train.")] = DEFAULTS.model,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = DEFAULTS.epochs,
    size: Annotated[int, typer.Option(help="Shard side and model input in px.")] = DEFAULTS.size,
    strategy: Annotated[str, typer.Option(help="Manifest strategy: none | weighted | resample.")] = DEFAULTS.strategy,
    registered_model: Annotated[str, typer.Option(help="Registry name.")] = DEFAULTS.registered_model,
    workers: Annotated[int | None, typer.Option(help="Dask LocalCluster workers for the data steps.")] = None,
    nproc: Annotated[int, typer.Option(help="Training processes (GPUs) on the worker's machine.")] = 1,
    global_batch_size: Annotated[
        int | None, typer.Option(help="Images per step over all processes (default: the per-process default).")
    ] = None,
    weights: Annotated[str | None, typer.Option(help="torchvision weights file for the backbone.")] = None,
    freeze_epochs: Annotated[int, typer.Option(help="Epochs with the backbone frozen after --weights.")] = 0,
    init_from: Annotated[
        str | None, typer.Option(help="Start each run from this model (e.g. models:/cxr-classifier@champion).")
    ] = None,
) -> None:
    """Register the retrain flow as a cron deployment on the Prefect server at PREFECT_API_URL."""
    from dataclasses import replace

    from cxr import storage
    from flows.deploy import check_cron, deploy_retrain
    from flows.retrain import check_parameters

    settings = replace(
        DEFAULTS, model=model, epochs=epochs, size=size, strategy=strategy, registered_model=registered_model
    )
    parameters = {"source": source, "workdir": workdir, "workers": workers, **settings.parameters(), "nproc": nproc}
    optional = {"global_batch_size": global_batch_size, "weights": weights, "init_from": init_from}
    parameters.update({k: v for k, v in optional.items() if v is not None})
    if freeze_epochs:
        parameters["freeze_epochs"] = freeze_epochs
    guarded(check_parameters, **parameters)  # bad settings are refused now, not at 02:00 on a worker
    guarded(check_cron, cron)
    if not guarded(storage.exists, source):
        fail(f"--source {source}: does not exist (the scheduled runs read the archive there)")
    if not os.environ.get("PREFECT_API_URL"):
        fail('PREFECT_API_URL is not set: start a server (`cxr stack up`, then `eval "$(cxr stack env)"`)')
    deployment_id = guarded(deploy_retrain, parameters, name, pool, cron)
    console.print(f"deployment retrain/{name} ({deployment_id}) on pool {pool}, cron '{cron}' UTC", highlight=False)
    console.print(f"start a worker: {BIN / 'prefect'} worker start --pool {pool}", highlight=False)
    out.print(str(deployment_id))


def study(
    workdir: Annotated[Path, typer.Option(help="Where the study keeps its data and report.")] = Path(".cxr/study"),
    source: Annotated[
        str | None, typer.Option(help="An NIH-layout archive; default: a synthetic one made in WORKDIR.")
    ] = None,
    n_images: Annotated[int, typer.Option("--n-images", help="Synthetic images, without --source.")] = 3000,
    shifted_images: Annotated[int, typer.Option(help="Images of the shifted source.")] = 1000,
    shard_size: Annotated[int, typer.Option(help="Shard side and model input in px.")] = 64,
    strategy: Annotated[
        list[str] | None, typer.Option("--strategy", help="Repeat for several (default: none, weighted, resample).")
    ] = None,
    seed: Annotated[
        list[int] | None, typer.Option("--seed", help="Repeat for several; 3 or more give a spread (default: 0 1 2).")
    ] = None,
    model: Annotated[str, typer.Option(help="Model for every run.")] = "small",
    epochs: Annotated[
        int, typer.Option(help="Passes over the unbalanced manifest; their steps are every strategy's budget.")
    ] = 6,
    strength: Annotated[
        float | None,
        typer.Option(
            help="Sign strength of the synthetic sources (default: the study's, see docs/imbalance-study.md)."
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Dask LocalCluster workers.")] = None,
    device: Annotated[str, typer.Option(help="Training and scoring: auto (the GPU if any), cpu or cuda.")] = "auto",
    cross_source: Annotated[
        bool,
        typer.Option(
            "--cross-source",
            help="Score on a second source in the CheXpert format (over the findings both label): in-source vs. "
            "other-source AUROC and the drop, per strategy.",
        ),
    ] = False,
) -> None:
    """The imbalance study: every strategy and seed, in distribution and on a shifted (or another) source; a report."""
    from cxr import storage
    from cxr.study import StudyConfig

    require_folder(workdir, "--workdir")
    if source is not None and not guarded(storage.exists, source):
        fail(f"--source {source}: does not exist (give an archive in the NIH layout, or no --source)")
    defaults = StudyConfig()
    strategies, seeds = tuple(strategy or defaults.strategies), tuple(seed or defaults.seeds)
    strength = defaults.signal_strength if strength is None else strength
    guarded(  # refuse bad settings first
        StudyConfig, strategies=strategies, seeds=seeds, model=model, epochs=epochs, signal_strength=strength
    )
    if source is None:  # one folder per strength: an archive made at another strength is not reused
        source = str(_synthetic_source(workdir / f"source-strength-{strength:g}", n_images, 128, 0, strength))
    _track_here()
    from flows.study import study as study_flow

    with _flow_api(workdir), _rerun_hint("cxr study"):
        report = guarded(
            study_flow,
            source=source,
            workdir=str(workdir.resolve()),
            sizes=[shard_size],
            shifted_images=shifted_images,
            strategies=list(strategies),
            seeds=list(seeds),
            model=model,
            epochs=epochs,
            strength=strength,
            workers=workers,
            device=device,
            cross_source=cross_source,
        )
    out.print("\n".join(f"- {line}" for line in report.verdict), highlight=False)
    console.print(f"report: {report.report}; MLflow parent run {report.parent_run_id}", highlight=False)
