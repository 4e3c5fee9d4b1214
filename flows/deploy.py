"""Register the retrain flow as a scheduled deployment on a running Prefect server (``cxr deploy``).

The deployment runs ``flows/retrain.py:retrain`` from this project's folder on a *process* work pool
(created if missing): start a worker where the data and the project are, ``prefect worker start --pool
cxr-process``. The same deployment in declarative form is ``prefect.yaml`` (``prefect deploy --all``);
a test checks that it states the defaults below.

This module imports Prefect only when it deploys, so the command line can read the defaults cheaply.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

PROJECT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/retrain.py:retrain"


@dataclass(frozen=True)
class DeploymentDefaults:
    """The scheduled retraining's defaults: DenseNet-121 at NIH scale, nightly. One home for them."""

    name: str = "retrain-scheduled"
    pool: str = "cxr-process"
    cron: str = "0 2 * * *"  # nightly, 02:00 UTC
    timezone: str = "UTC"
    model: str = "densenet121"
    epochs: int = 10
    size: int = 224  # shard side and model input (px)
    strategy: str = "weighted"
    registered_model: str = "cxr-classifier"

    def parameters(self) -> dict[str, Any]:
        """The retrain flow's parameters these defaults set."""
        return {
            "model": self.model,
            "epochs": self.epochs,
            "sizes": [self.size],
            "strategy": self.strategy,
            "registered_model": self.registered_model,
        }


DEFAULTS = DeploymentDefaults()


async def _ensure_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_work_pool(name)
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def check_cron(cron: str) -> None:
    """Refuse a cron expression the schedule would not take, in one line."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=DEFAULTS.timezone)
    except ValidationError:
        raise ValueError(f"--cron {cron!r}: not a cron expression (five fields, e.g. {DEFAULTS.cron!r})") from None


def deploy_retrain(
    parameters: dict[str, Any], name: str = DEFAULTS.name, pool: str = DEFAULTS.pool, cron: str = DEFAULTS.cron
) -> UUID:
    """Create or update the cron deployment of ``retrain``; returns its id."""
    from prefect import flow
    from prefect.client.schemas.schedules import CronSchedule

    asyncio.run(_ensure_pool(pool))
    retrain = flow.from_source(source=str(PROJECT), entrypoint=ENTRYPOINT)
    return retrain.deploy(
        name=name,
        work_pool_name=pool,
        schedule=CronSchedule(cron=cron, timezone=DEFAULTS.timezone),
        parameters=parameters,
        build=False,
        push=False,
        print_next_steps=False,
        description="Scheduled retraining on whatever the archive holds (see README).",
        tags=["cxr"],
    )
