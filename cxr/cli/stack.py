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


@app.command("up")
def up(root: StackDir = DEFAULT_DIR) -> None:
    """Start the three services (reusing running ones) and wait until each answers its health check."""
    from cxr.services.stack import env_lines
    from cxr.services.stack import up as start

    state = guarded(start, root)
    for name, service in state["services"].items():
        console.print(f"{name:8} {service['url']}  (pid {service['pid']})", highlight=False)
    console.print(f"logs in {Path(state['root']) / 'logs'}; point your shell at the stack with:", highlight=False)
    out.print("\n".join(env_lines(root)), highlight=False)


@app.command("env")
def env(root: StackDir = DEFAULT_DIR) -> None:
    """Shell lines for `eval "$(cxr stack env)"` (credentials are sourced from a file, never printed)."""
    from cxr.services.stack import env_lines

    if not (root / "stack.json").exists():
        fail(f"no stack running from {root}; run `cxr stack up`")
    out.print("\n".join(env_lines(root)), highlight=False)


@app.command("status")
def status(root: StackDir = DEFAULT_DIR, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Whether each service's process lives and answers its health check."""
    from cxr.services.stack import status as read_status

    report = read_status(root)
    if as_json:
        out.print(json.dumps(report, indent=2), highlight=False)
        return
    if not report["services"]:
        out.print("the stack is not running")
        raise typer.Exit(1)
    for name, service in report["services"].items():
        state = (
            "up" if service["alive"] and service["healthy"] else "alive, not answering" if service["alive"] else "down"
        )
        out.print(f"{name:8} {state:22} {service['url']}", highlight=False)
    if not report["running"]:
        raise typer.Exit(1)


@app.command("down")
def down(root: StackDir = DEFAULT_DIR) -> None:
    """Stop every service of the stack."""
    from cxr.services.stack import down as stop

    stopped = stop(root)
    console.print("stopped: " + (", ".join(stopped) or "nothing was running"), highlight=False)
