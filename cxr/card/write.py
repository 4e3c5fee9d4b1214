"""``cxr report``: a model's card for one split of a dataset version, written to a folder:

- ``model_card.html``: the page (self-contained: no request leaves it);
- ``card.json``: its numbers (:class:`cxr.card.content.ModelCard`);
- ``charts/`` and ``gallery/``: the PNGs the page embeds, for whoever wants them alone.

Inference (the split's probabilities, the heatmaps of its boxed images) comes first; everything after it is
:func:`make_card`, whose time ``bench/report.py`` measures apart from inference.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cxr import __version__, storage
from cxr.card.content import ModelCard, SplitPredictions, build_card
from cxr.card.page import BALANCE_CHART, render
from cxr.card.provenance import Provenance, gather
from cxr.charts import balance_chart, prevalence_chart
from cxr.data.stats import PREVALENCE_CHART
from cxr.data.version import DatasetVersion
from cxr.findings import FINDINGS
from cxr.learn.checkpoint import ModelBundle
from cxr.learn.evaluate import LocalizedSplit, check_resamples, localize, only_learned, version_with_split
from cxr.learn.inference import load_model, predict_rows, shard_store, single_process
from cxr.learn.reference import model_reference
from cxr.learn.shards import split_rows
from cxr.learn.subgroups import groups_of
from cxr.records import to_json
from cxr.redact import redact

PAGE, DATA = "model_card.html", "card.json"
ARTIFACTS = "model_card"  # the folder of a run's artifacts that holds the page and its data
GALLERY = 12  # heatmap overlays on the page, findings taken in turn


@dataclass(frozen=True)
class CardFiles:
    """What :func:`write_card` wrote, and how long its two halves took."""

    out: str
    page: str
    data: str
    card: ModelCard
    inference_s: float
    card_s: float  # everything after inference: numbers, charts, the page, the files


def write_card(
    model_uri: str,
    dataset: str,
    out: str,
    split: str = "test",
    n_boot: int = 200,
    seed: int = 0,
    gallery: int = GALLERY,
    device: str = "cpu",
) -> CardFiles:
    """Score ``model_uri`` on ``split`` of a dataset version and write its card into ``out``.

    The settings, the dataset and its split are checked before the model is loaded."""
    check_resamples(n_boot)
    if gallery < 0:
        raise ValueError(f"the gallery's size must be >= 0, got {gallery}")
    model_uri = model_reference(model_uri)
    info = single_process(device)
    version, metadata = version_with_split(dataset, split)
    started = time.perf_counter()
    model, bundle = load_model(model_uri, info.device)
    store = shard_store(version, bundle)
    rows = split_rows(metadata, split, expand_repeats=False)
    probs, labels = predict_rows(model, store, rows, bundle.image_size, info)
    located = localize(model, version, store, rows, bundle.image_size, seed, info, gallery)
    inference_s = time.perf_counter() - started
    part = metadata.filter(pc.equal(metadata["split"], split))  # the rows in split_rows' order
    predictions = SplitPredictions(rows.patient_ids, only_learned(labels, bundle), probs, split_groups(part))
    return make_card(model_uri, version, split, predictions, bundle, located, out, n_boot, seed, inference_s)


def split_groups(part: pa.Table) -> dict:
    """Each row's sex, age band and view."""
    return groups_of(part["sex"].to_pylist(), part["age"].to_pylist(), part["view"].to_pylist())


def make_card(
    model_uri: str,
    version: DatasetVersion,
    split: str,
    predictions: SplitPredictions,
    bundle: ModelBundle,
    located: LocalizedSplit | None,
    out: str,
    n_boot: int = 200,
    seed: int = 0,
    inference_s: float = 0.0,
    provenance: Provenance | None = None,
) -> CardFiles:
    """Everything after inference: the numbers, the charts, the page and the files."""
    started = time.perf_counter()
    if provenance is None:
        provenance = gather(model_uri, version, bundle.config, bundle.dataset_digest)
    thresholds = list(bundle.thresholds) or [0.5] * len(FINDINGS)
    where = f"the model's, {bundle.threshold_rule}" if bundle.thresholds else "0.5 (the model records none)"
    overlays = {i: f"gallery/{name}" for i, name, _ in located.overlays} if located else {}
    card = build_card(
        model_uri,
        version.digest,
        split,
        predictions,
        thresholds,
        where,
        located,
        overlays,
        provenance,
        datetime.now(UTC).isoformat(timespec="seconds"),
        __version__,
        n_boot,
        seed,
    )
    images: dict[str, bytes] = {f"gallery/{name}": png for _, name, png in located.overlays} if located else {}
    images.update(charts(provenance, version))
    page = render(card, images)
    files = write_files(out, page, card, images)
    return CardFiles(out, files[0], files[1], card, inference_s, time.perf_counter() - started)


def charts(provenance: Provenance, version: DatasetVersion) -> Mapping[str, bytes]:
    """The data section's charts: prevalence per split (the one ``cxr stats`` drew beside its stats.json, else
    drawn now), and what balancing did (when the manifest is known)."""
    out = {}
    drawn = version.file(PREVALENCE_CHART)  # the version's charts/prevalence.png, written with its stats.json
    if storage.exists(drawn):
        out[PREVALENCE_CHART] = storage.read_bytes(drawn)
    elif provenance.stats is not None:
        out[PREVALENCE_CHART] = prevalence_chart(provenance.stats)
    if provenance.manifest is not None:
        out[BALANCE_CHART] = balance_chart(provenance.manifest)
    return out


def write_files(out: str, page: str, card: ModelCard, images: Mapping[str, bytes]) -> tuple[str, str]:
    """The page, its data and its images into ``out``; the page and the data's URLs."""
    for name, png in images.items():
        storage.write_bytes(storage.join(out, name), png)
    data = storage.join(out, DATA)
    storage.write_text(data, to_json(card) + "\n")
    url = storage.join(out, PAGE)
    storage.write_text(url, page)  # last: a page present means its folder is whole
    return url, data


def log_card(run_id: str, files: CardFiles, artifact_path: str = ARTIFACTS) -> None:
    """The card's page and data as artifacts of MLflow run ``run_id`` (MLflow's UI shows the page)."""
    from cxr.tracking.mlflow_run import log_to_run

    log_to_run(run_id, files.out, (PAGE, DATA), artifact_path, {})


def card_link(files: CardFiles, run_id: str | None) -> str:
    """Where people open the card: in MLflow's UI when the tracking server is one (the page is a run
    artifact there), else the page itself (a file:// or s3:// URL). Credentials never appear in it."""
    from cxr.tracking.mlflow_run import tracking_uri

    uri, chain = tracking_uri(), files.card.provenance.lineage
    if run_id and chain is not None and uri.startswith(("http://", "https://")):
        return redact(f"{uri.rstrip('/')}/#/experiments/{chain.run.experiment_id}/runs/{run_id}/artifacts/{ARTIFACTS}")
    return redact(files.page if storage.is_remote(files.page) else Path(files.page).resolve().as_uri())
