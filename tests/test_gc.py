"""``cxr gc``: a workdir with five dataset versions and two registered models (a real MLflow store).

gc keeps exactly what the models (and a training run in progress) need, LATEST and the --keep newest;
a dry run changes nothing and prints what it would free; --apply frees exactly that.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxr.cli import app
from cxr.data.ingest import ingest
from cxr.data.plan import IngestOptions
from cxr.data.version import open_version
from cxr.tracking import tags
from cxr.tracking.mlflow_run import client, experiment_id
from cxr.tracking.needed import UnknownLineageError, needed_versions
from tests.archives import archive, grow

OPTIONS = IngestOptions(sizes=(16,), part_images=4)
DAY = 24 * 3600


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """A real MLflow store (SQLite) of this module's own: its registered models are the ones made here."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client(uri).search_experiments()  # creates the database once
    return uri


def _register(uri: str, tmp: Path, name: str, digest: str, root: str, running: bool = False) -> str:
    """A run with the lineage tags training writes and a tiny artifact, registered as a model version."""
    mlflow_client = client(uri)
    lineage = {tags.DATASET_DIGEST: digest, tags.DATASET_ROOT: root, tags.MANIFEST_STRATEGY: "none"}
    run = mlflow_client.create_run(experiment_id(mlflow_client, uri, "gc-test"), tags=lineage)
    if running:
        return run.info.run_id
    (tmp / "model.txt").write_text(f"a model of {digest}\n")
    mlflow_client.log_artifact(run.info.run_id, str(tmp / "model.txt"), "model")
    mlflow_client.set_terminated(run.info.run_id)
    if not mlflow_client.search_registered_models(filter_string=f"name = '{name}'"):
        mlflow_client.create_registered_model(name)
    mlflow_client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return run.info.run_id


def _tree(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*") if p.is_file()}


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then))


def test_gc_keeps_exactly_what_models_need_and_a_dry_run_changes_nothing(tmp_path, mlflow_uri, reliability_record):
    work = tmp_path / "work"
    src, root = archive(work / "source", 8, seed=11), work / "datasets"
    digests = []
    for step in range(5):  # five snapshots of a growing archive: five versions
        if step:
            grow(src, 1, start=900 + step)
        digests.append(ingest(str(src), str(root), OPTIONS).digest)
    assert len(set(digests)) == 5 and (root / "LATEST").read_text().strip() == digests[4]
    uri = mlflow_uri
    _register(uri, tmp_path, "chest", digests[0], str(root))
    _register(uri, tmp_path, "chest-small", digests[2], str(root))
    _register(uri, tmp_path, "-", digests[1], str(root), running=True)  # training on it right now
    cache = tmp_path / "cache"
    for digest in (digests[0], digests[3]):  # local copies of shards, as training on S3 versions leaves them
        shutil.copytree(root / digest / "shards", cache / "shards" / digest)
    _age(root / ".work", 2 * DAY)  # old ingests' parts, no longer in use
    _age(cache, 2 * DAY)
    (root / "0123456789abcdef" / "shards").mkdir(parents=True)  # a publish killed long ago
    (root / "0123456789abcdef" / "shards" / "x.npy").write_bytes(b"x" * 100)
    _age(root / "0123456789abcdef", 2 * DAY)
    latest_parts = set(open_version(str(root)).info["parts"])
    assert {p.name for p in (root / ".work" / "parts").iterdir()} > latest_parts

    gc = ["gc", str(root), "--keep", "1", "--tracking-uri", uri, "--cache", str(cache)]
    before = {**_tree(root), **{f"cache/{k}": v for k, v in _tree(cache).items()}}
    dry = CliRunner().invoke(app, gc)
    assert dry.exit_code == 0, dry.output[-3000:]
    assert {**_tree(root), **{f"cache/{k}": v for k, v in _tree(cache).items()}} == before  # nothing changed
    would = re.search(r"would free ([\d,]+) bytes: (.*) \(dry run", dry.stdout)
    assert would, dry.stdout
    assert would[2] == "1 version, 1 unfinished version, 3 parts, 1 cached shards"  # parts of versions 1-4

    applied = CliRunner().invoke(app, [*gc, "--apply"])
    assert applied.exit_code == 0, applied.output[-3000:]
    after = {**_tree(root), **{f"cache/{k}": v for k, v in _tree(cache).items()}}
    freed = sum(size for path, (size, _) in before.items() if path not in after)
    assert freed == int(would[1].replace(",", "")) and f"freed {would[1]} bytes" in applied.stdout
    kept = sorted(p.name for p in root.iterdir() if re.fullmatch(r"[0-9a-f]{16}", p.name))
    assert kept == sorted([digests[0], digests[1], digests[2], digests[4]])  # model, running run, model, LATEST
    assert {p.name for p in (root / ".work" / "parts").iterdir()} == latest_parts
    assert sorted(p.name for p in (cache / "shards").iterdir()) == [digests[0]]
    for digest in kept:
        assert open_version(str(root / digest)).metadata().num_rows > 0  # whole, and it passes its hashes
    assert (root / "LATEST").read_text().strip() == digests[4]
    reliability_record.record(
        "dataset store",
        "cxr gc on a workdir of 5 versions, 2 registered models and a training run in progress",
        "the dry run changed nothing and printed the bytes --apply then freed; kept exactly the versions "
        "the models and the running run name, LATEST and --keep 1",
    )


def test_gc_refuses_when_a_model_version_does_not_say_what_it_needs(tmp_path, mlflow_uri):
    mlflow_client = client(mlflow_uri)
    run = mlflow_client.create_run(experiment_id(mlflow_client, mlflow_uri, "gc-test"))  # no lineage tags
    mlflow_client.set_terminated(run.info.run_id)
    mlflow_client.create_registered_model("untagged")
    try:
        mlflow_client.create_model_version("untagged", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        with pytest.raises(UnknownLineageError, match="model untagged version 1"):
            needed_versions(mlflow_uri)
        refused = CliRunner().invoke(app, ["gc", str(tmp_path), "--tracking-uri", mlflow_uri, "--apply"])
        assert refused.exit_code == 2 and "error:" in refused.output and "untagged" in refused.output
    finally:
        mlflow_client.delete_registered_model("untagged")
