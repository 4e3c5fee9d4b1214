"""What every command shares: the two consoles, one error line with exit code 2, progress bars.

Both consoles redact what they print (:func:`cxr.redact.redact`): a URL with credentials in it (a tracking
URI ``http://user:password@host``, a ``?token=`` query) never reaches the terminal as it is, whichever
command prints it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from cxr.redact import redact

T = TypeVar("T")


class RedactingConsole(Console):
    """A rich console whose ``print`` redacts credentials in every string it is given."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        for o in objects:
            if isinstance(o, Table) and isinstance(o.title, str):  # e.g. a source archive's URL
                o.title = redact(o.title)
        super().print(*(redact(o) if isinstance(o, str) else o for o in objects), **kwargs)


console = RedactingConsole(stderr=True, soft_wrap=True)  # progress, notes, errors
out = RedactingConsole(soft_wrap=True)  # results: tables, JSON, digests
if not out.is_terminal:  # piped or captured: tables at 80 columns would wrap every row
    out = RedactingConsole(soft_wrap=True, width=140)


def announce(line: str) -> None:
    """A note on stderr, printed as it is."""
    console.print(line, highlight=False)


def fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def require_folder(path: str | os.PathLike[str], option: str) -> None:
    """Refuse a local path under which a file stands where a folder belongs, before any work."""
    found = first_file(os.fspath(path))
    if found:
        fail(f"{option} {path}: {found} is a file, where a folder was expected")


def first_file(path: str | None) -> str | None:
    """The part of ``path`` that exists as a file (``a/b.csv`` for ``a/b.csv/c``): what was given wrongly."""
    while path and not os.path.isfile(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return path


def guarded(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Call a library function; turn expected failures into one clear line and exit code 2."""
    from cxr.data.csv_text import SourceFormatError
    from cxr.data.decode import ImageRejected
    from cxr.storage import StorageError, UnsafePathError

    try:
        return fn(*args, **kwargs)
    except (SourceFormatError, UnsafePathError, ValueError) as err:
        fail(str(err))
    except ImageRejected as err:
        fail(f"{err.reason}: {err.detail}")
    except FileNotFoundError as err:
        fail(f"not found: {err}")
    except PermissionError as err:
        fail(f"permission denied: {err}")
    except IsADirectoryError as err:
        fail(f"{err.filename or err}: is a folder, where a file was expected (e.g. a run folder's model.pt)")
    except NotADirectoryError as err:
        fail(f"{first_file(err.filename) or err}: is a file, where a folder was expected")
    except StorageError as err:
        fail(str(err))
    except Exception as err:
        if type(err).__module__.startswith("mlflow"):  # e.g. an unknown model name or alias
            fail(f"MLflow: {err}")
        raise


def progress(in_bytes: bool = False) -> Progress:
    """A progress bar on stderr (shown on a terminal, or with CXR_PROGRESS=1); counts, or bytes with their rate."""
    counts = (DownloadColumn(binary_units=True), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(),)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and os.environ.get("CXR_PROGRESS") != "1",
    )
