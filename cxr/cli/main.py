"""The ``cxr`` entry point: every command under one rule for signals (:mod:`cxr.signals`).

SIGINT (Ctrl-C), SIGTERM or SIGHUP stops the command: its clean-up runs (what finished is kept, what was
half-written is removed, MLflow runs are closed as KILLED), any process it started that is still alive
is terminated, and it ends with one line on stderr and exit code 128 + the signal's number (130 for
SIGINT, 143 for SIGTERM). The handlers are installed before the command's modules are imported, so even
an early Ctrl-C ends with that one line rather than a traceback.

A usage error (an unknown option, a missing or malformed value) is one ``error:`` line naming it and the
``--help`` to read, with exit code 2, like every other user error.
"""

from __future__ import annotations

import signal
import sys

import typer

from cxr.signals import HANDLED, Stop, stop_children, stopping_on_signals


def main(argv: list[str] | None = None) -> None:
    with stopping_on_signals() as stop:
        try:
            from cxr.cli import app

            returned = app(args=argv, prog_name="cxr", standalone_mode=False)
            code: int | str | None = returned if isinstance(returned, int) else 0
        except typer.Abort:
            code = 1
        except typer.TyperException as err:  # a usage error: one line, not click's usage block
            _usage_error(err)
            code = getattr(err, "exit_code", 2)
        except SystemExit as exit_:
            code = exit_.code
        except KeyboardInterrupt:  # before the command started (typer turns later ones into exit 130)
            code = 130
        if stop.signum is not None:
            left = stop_children()
            _report(stop, left)
            code = 128 + stop.signum
    if stop.signum is not None:  # stopping already: a late signal must not end the exit half way
        for handled in HANDLED:
            signal.signal(handled, signal.SIG_IGN)
    sys.exit(code)


def _usage_error(err: typer.TyperException) -> None:
    context = getattr(err, "ctx", None)
    message = (err.format_message() if hasattr(err, "format_message") else str(err)).rstrip(".")
    hint = f" (`{context.command_path} --help` lists what it takes)" if context is not None else ""
    print(f"error: {message}{hint}", file=sys.stderr, flush=True)


def _report(stop: Stop, left: list[str]) -> None:
    notes = list(stop.notes)
    if left:
        notes.append(f"stopped {len(left)} process{'es' if len(left) != 1 else ''} it had started ({'; '.join(left)})")
    text = "; ".join(notes) or "stopped"
    print(f"interrupted by {signal.Signals(stop.signum).name}: {text}", file=sys.stderr, flush=True)
