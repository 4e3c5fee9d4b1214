"""``cxr stack up | down | status | env``: the local stack on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.console import console, fail, guarded, out

app = typer.Typer(
    help="The local stack on 127.0.0.1: S3 (SeaweedFS), MLflow (SQLite, artifacts on S3), Prefect.",
    no_args_is_help=True,
)
StackDir = Annotated[Path, typer.Option("--dir", help="Where the stack keeps its data, logs and state.")]
DEFAULT_DIR = Path(".cxr/stack")
Services = Annotated[
    list[str] | None,
    typer.Option(
        "--service",
        help="Start only this service (repeatable): s3, mlflow (starts s3 too: its artifact store), prefect. "
        "Default: all three.",
    ),
]


@app.command("up")
def up(root: StackDir = DEFAULT_DIR, service: Services = None) -> None:
    """Start the services (reusing running ones) and wait until each answers its health check.

    Ctrl-C (or SIGTERM) while they start stops every one already started; nothing is left running.
    """
    from cxr.services.process import ServiceStartError
    from cxr.services.stack import SERVICES, StackBusyError, env_lines
    from cxr.services.stack import up as start
    from cxr.signals import Interrupted

    try:
        state = guarded(start, root, tuple(service or SERVICES))
    except Interrupted as err:
        stopped = ", ".join(err.stopped) or "nothing had started yet"
        console.print(f"interrupted by {err.name}: stopped {stopped}; nothing is left running", highlight=False)
        raise typer.Exit(err.exit_code) from None
    except (ServiceStartError, StackBusyError) as err:
        fail(f"{err} (the servers this `stack up` started were stopped)")
    for record in state.services:
        console.print(f"{record.name:8} {record.url}  (pid {record.process.pid})", highlight=False)
    console.print(f"logs in {Path(state.root) / 'logs'}; point your shell at the stack with:", highlight=False)
    out.print("\n".join(env_lines(root)), highlight=False)


@app.command("env")
def env(root: StackDir = DEFAULT_DIR) -> None:
    """Shell lines for `eval "$(cxr stack env)"` (credentials are sourced from a file, never printed)."""
    from cxr.services.stack import env_lines

    out.print("\n".join(guarded(env_lines, root)), highlight=False)


@app.command("status")
def status(root: StackDir = DEFAULT_DIR, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Whether each service's process (its id and start time) lives and answers its health check."""
    from cxr.services.stack import STARTING
    from cxr.services.stack import status as read_status

    report = guarded(read_status, root)
    if as_json:
        out.print(json.dumps(report.to_json(), indent=2), highlight=False)
        return
    if not report.services:
        out.print("the stack is not running")
        raise typer.Exit(1)
    if report.phase == STARTING and report.starter is not None:
        if report.starter_running:
            out.print(f"`cxr stack up` (pid {report.starter.pid}) is starting the stack", highlight=False)
        else:
            out.print(
                f"`cxr stack up` (pid {report.starter.pid}) ended before the stack was up; "
                "`cxr stack down` stops what it started",
                highlight=False,
            )
    for service in report.services:
        state = "up" if service.alive and service.healthy else "alive, not answering" if service.alive else "down"
        out.print(f"{service.name:8} {state:22} {service.url}", highlight=False)
    if not report.running:
        raise typer.Exit(1)


@app.command("down")
def down(root: StackDir = DEFAULT_DIR) -> None:
    """Stop every service of the stack (only processes that are still the ones the stack started)."""
    from cxr.services.process import Stopped
    from cxr.services.stack import down as stop

    report = guarded(stop, root)
    console.print("stopped: " + (", ".join(report.names(Stopped.STOPPED)) or "nothing was running"), highlight=False)
    if report.names(Stopped.GONE):
        console.print("already gone: " + ", ".join(report.names(Stopped.GONE)), highlight=False)
    for record, outcome in report.outcomes:
        if outcome is Stopped.NOT_OURS:
            console.print(
                f"not signalled: {record.name} (pid {record.process.pid} is not the process the stack started: "
                "the id was reused, or no start time was recorded)",
                highlight=False,
            )
