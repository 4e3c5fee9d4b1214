"""Which dataset versions models need: what ``cxr gc`` must never remove.

Every registered model version names, through its run's lineage tag ``cxr.dataset_digest``
(:mod:`cxr.tracking.tags`), the dataset version it was trained on; a training run still in progress
names the version it is reading. A model version whose run cannot be read, or carries no digest, makes
the answer unknown: :class:`UnknownLineageError`, so gc removes nothing rather than guess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from cxr.data.gc import NeededVersions
from cxr.tracking import tags
from cxr.tracking.mlflow_run import client

_PAGE = 1000


class UnknownLineageError(ValueError):
    """Some registered model versions do not say which dataset version they need."""


def _pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    token = None
    while True:
        page = search(max_results=_PAGE, page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def needed_versions(uri: str | None = None) -> NeededVersions:
    """The dataset digests registered model versions and running training runs were trained on."""
    mlflow_client = client(uri)
    by: dict[str, list[str]] = {}
    unknown = []
    for model in _pages(mlflow_client.search_registered_models):
        escaped = model.name.replace("'", "\\'")
        for version in _pages(mlflow_client.search_model_versions, filter_string=f"name = '{escaped}'"):
            who = f"model {model.name} version {version.version}"
            try:
                digest = (
                    mlflow_client.get_run(version.run_id).data.tags.get(tags.DATASET_DIGEST) if version.run_id else None
                )
            except Exception as err:  # the run is gone: what it needed cannot be known
                if not type(err).__module__.startswith("mlflow"):
                    raise
                digest = None
            if digest:
                for one in digest.split("+"):  # a mixed manifest's run needs every version it drew on
                    by.setdefault(one, []).append(who)
            else:
                unknown.append(who)
    if unknown:
        raise UnknownLineageError(
            f"{', '.join(unknown)}: no readable run with a {tags.DATASET_DIGEST} tag, so which dataset version "
            "they need is unknown; gc removes nothing (tag the runs, or delete those model versions)"
        )
    experiments = [e.experiment_id for e in _pages(mlflow_client.search_experiments)]
    if experiments:
        running = _pages(
            mlflow_client.search_runs, experiment_ids=experiments, filter_string="attributes.status = 'RUNNING'"
        )
        for run in running:
            digest = run.data.tags.get(tags.DATASET_DIGEST)
            for one in digest.split("+") if digest else ():
                by.setdefault(one, []).append(f"run {run.info.run_id} (running)")
    return NeededVersions({digest: tuple(who) for digest, who in sorted(by.items())})
