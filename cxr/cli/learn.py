"""``cxr train | evaluate | report | predict | lineage``: models from a manifest, and what they do and came from."""

from __future__ import annotations

from typing import Annotated

import typer

from cxr.cli.console import console, fail, guarded, out, require_folder
from cxr.cli.tables import prediction_table, rich_table
from cxr.learn.config import PREDICT_BATCH
from cxr.records import to_json

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
ModelOption = Annotated[
    str, typer.Option("--model", help="A model.pt (local or s3://) or an MLflow URI (models:/NAME@ALIAS).")
]
DeviceOption = Annotated[str, typer.Option(help="auto (the GPU if there is one, else the CPU), cpu, cuda or cuda:N.")]
NPROC_HELP = (
    "processes on this machine; more than 1 runs torchrun --standalone (DDP). Several machines: run torchrun yourself"
)


def train(ctx: typer.Context) -> None:
    """Train a classifier on a manifest; `cxr train --help` lists every setting with its meaning and default."""
    from cxr.learn.config import TrainConfig, get_args_parser
    from cxr.learn.launch import preflight

    parser = get_args_parser(prog="cxr train")
    parser.add_argument("--nproc", type=int, default=1, help=NPROC_HELP)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --output-dir (its model.pt, checkpoint.pt, metrics.jsonl, result.json)",
    )
    parser.error = lambda message: fail(f"{message} (`cxr train --help` lists every setting)")  # type: ignore[method-assign]
    values = vars(parser.parse_args(ctx.args))
    nproc, overwrite = values.pop("nproc"), values.pop("overwrite")
    if nproc < 1:
        fail(f"--nproc must be >= 1, got {nproc}")
    checked = guarded(preflight, guarded(TrainConfig.from_dict, values), nproc, overwrite)
    for warning in checked.warnings:
        console.print(f"warning: {warning}", highlight=False, markup=False)
    config = checked.config
    replaced = f" (replacing {', '.join(checked.replaced)})" if checked.replaced else ""
    console.print(f"training into {config.output_dir}{replaced}", highlight=False, markup=False)
    if nproc == 1:
        from cxr.learn.train import main

        result = guarded(main, config)
    else:
        from cxr.learn.launch import launch

        result = guarded(launch, config, nproc, on_line=lambda line: console.print(line, highlight=False, markup=False))
    auroc = "-" if result.val_mean_auroc is None else f"{result.val_mean_auroc:.3f}"
    console.print(f"val mean AUROC {auroc}; model: {result.model_url}", highlight=False)
    if result.tracked:
        console.print(f"MLflow run {result.tracked.run_id}; model: {result.tracked.model_uri}", highlight=False)
    registration = result.tracked.registration if result.tracked else None
    if registration:
        console.print(
            f"model {registration.name} version {registration.version}: {registration.verdict}", highlight=False
        )


def evaluate(
    model_uri: ModelOption,
    dataset: Annotated[str, typer.Option("--dataset", help="A dataset root (its LATEST) or a version folder.")],
    split: Annotated[str, typer.Option(help="The split to evaluate.")] = "test",
    threshold_rule: Annotated[str, typer.Option(help="youden | specificity (thresholds chosen on val).")] = "youden",
    specificity: Annotated[float, typer.Option(help="Target specificity for --threshold-rule specificity.")] = 0.9,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples (of patients) for the AUROC interval.")] = 200,
    out_dir: Annotated[
        str | None, typer.Option("--out", help="Write evaluation.json, curves.png, heatmaps/ here.")
    ] = None,
    device: DeviceOption = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Per-finding AUROC (95 % interval over patients), AUPRC, sensitivity and specificity, and CAM localization."""
    from cxr.data.version import open_version
    from cxr.learn.reference import check_device, model_reference

    # a wrong --model, --device or --dataset is named before torch and the model load (seconds)
    guarded(check_device, device)
    model_uri = guarded(model_reference, model_uri)
    guarded(open_version, dataset)
    from cxr.learn.evaluate import evaluate_model
    from cxr.reports import evaluation_table

    result = guarded(
        evaluate_model,
        model_uri,
        dataset,
        split,
        threshold_rule,
        specificity,
        bootstrap,
        out_dir=out_dir,
        device=device,
    )
    warning = result.dataset_warning()
    if warning:
        console.print(f"warning: {warning}", highlight=False, markup=False)
    if as_json:
        out.print(result.to_json(), end="", highlight=False)
        return
    out.print(rich_table(evaluation_table(result)))


def report(
    model_uri: Annotated[
        str, typer.Argument(help="A model.pt (local or s3://) or an MLflow URI (models:/NAME@ALIAS, runs:/ID/model).")
    ],
    dataset: Annotated[str, typer.Option("--dataset", help="A dataset root (its LATEST) or a version folder.")],
    out_dir: Annotated[str, typer.Option("--out", help="The folder for model_card.html, card.json and its PNGs.")],
    split: Annotated[str, typer.Option(help="The split to report on.")] = "test",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples (of patients) for every interval.")] = 200,
    gallery: Annotated[int, typer.Option(help="Heatmap overlays on the page (findings taken in turn).")] = 12,
    log_to_run: Annotated[
        bool, typer.Option("--log-to-run", help="Also log the page and its data to the model's MLflow run.")
    ] = False,
    device: DeviceOption = "auto",
) -> None:
    """A model card: one self-contained HTML page (and card.json) with per-finding AUROC and AUPRC, calibration,
    subgroups (sex, age band, view) with the false "No Finding" rate, heatmaps against the boxes, lineage and
    the gate's evidence."""
    from cxr.data.version import open_version
    from cxr.learn.reference import check_device, model_reference

    require_folder(out_dir, "--out")
    guarded(check_device, device)
    model_uri = guarded(model_reference, model_uri)
    guarded(open_version, dataset)
    from cxr.card.write import log_card, write_card

    files = guarded(write_card, model_uri, dataset, out_dir, split, bootstrap, 0, gallery, device)
    card = files.card
    mean = "-" if card.mean_auroc is None else f"{card.mean_auroc:.3f}"
    console.print(
        f"{card.n_images} {split} images: mean AUROC {mean}; inference {files.inference_s:.1f} s, "
        f"the card {files.card_s:.1f} s",
        highlight=False,
    )
    if log_to_run:
        chain = card.provenance.lineage
        if chain is None:
            fail(f"cannot log the card to MLflow: {card.provenance.lineage_missing}")
        guarded(log_card, chain.run.id, files)
        console.print(f"logged to MLflow run {chain.run.id} (artifacts model_card/)", highlight=False)
    out.print(f"model card: {files.page}", highlight=False, markup=False)


def predict(
    images: Annotated[
        list[str],
        typer.Argument(
            help="PNG, JPEG or DICOM files, folders (their image files, every level below) or glob patterns "
            "such as 'scans/*.png' (local or s3://)."
        ),
    ],
    model_uri: ModelOption,
    heatmaps: Annotated[str | None, typer.Option(help="Write heatmap overlays (PNG) to this folder.")] = None,
    device: DeviceOption = "auto",
    as_json: JsonFlag = False,
    batch_size: Annotated[
        int, typer.Option(help="Images scored in one pass of the model, for folders and patterns.")
    ] = PREDICT_BATCH,
) -> None:
    """The 14 probabilities per image; for findings above threshold, a box (1024 px frame and the image's own
    pixels) and the heatmap share.

    The heatmap share is the share of the image where the finding's heatmap is at least 0.7 of its range (all of
    its regions, not the box's share). Files named one by one are all checked before the model loads. A folder or
    pattern prints one JSON line per image as it is scored (a file that cannot be used: a line with its error),
    with a progress bar on stderr."""
    from cxr.learn.predict import is_many, predict_images

    if any(guarded(is_many, image) for image in images):
        _predict_many(images, model_uri, heatmaps, device, batch_size)
        return
    results = guarded(predict_images, images, model_uri, heatmaps, device)
    if as_json:
        out.print(to_json(results), highlight=False)
        return
    for prediction in results:
        out.print(prediction_table(prediction))


def _predict_many(images: list[str], model_uri: str, heatmaps: str | None, device: str, batch_size: int) -> None:
    """JSON lines on stdout, one per image file, written as each batch is scored."""
    import sys

    from cxr.cli.console import progress
    from cxr.learn.predict import Refused, expand, open_predictor, predict_each

    if batch_size < 1:
        fail(f"--batch-size must be >= 1, got {batch_size}")
    paths = guarded(expand, images)
    predictor = guarded(open_predictor, model_uri, heatmaps, device)
    refused = 0

    def run() -> None:
        nonlocal refused
        with progress() as bar:
            task = bar.add_task("predicting", total=len(paths))
            for result in predict_each(predictor, paths, heatmaps, batch_size, lambda n: bar.advance(task, n)):
                refused += isinstance(result, Refused)
                sys.stdout.write(to_json(result, indent=None) + "\n")
                sys.stdout.flush()

    guarded(run)
    console.print(
        f"{len(paths)} images: {len(paths) - refused} scored, {refused} refused (their lines say why)",
        highlight=False,
        markup=False,
    )
    if refused == len(paths):
        fail("no image could be scored")


def lineage(
    model_uri: Annotated[
        str,
        typer.Argument(
            help="A model.pt or its run folder (local or s3://), models:/NAME@ALIAS, models:/NAME/VERSION, "
            "models:/m-ID or runs:/RUN_ID."
        ),
    ],
    as_json: JsonFlag = False,
) -> None:
    """What made a model: model version -> run -> manifest -> dataset version -> source archive."""
    from cxr.tracking.lineage import format_chain
    from cxr.tracking.lineage import lineage as chain_of

    chain = guarded(chain_of, model_uri)
    if as_json:
        out.print(to_json(chain), highlight=False)
        return
    out.print(format_chain(chain), highlight=False, markup=False)
