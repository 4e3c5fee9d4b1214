"""Typed results to and from JSON: frozen dataclasses at the layer boundaries, plain JSON at the edges.

``to_plain`` turns a dataclass (nested dataclasses, tuples, mappings) into JSON-ready values;
``from_plain`` checks and rebuilds one with pydantic, so a misspelt or missing key fails loudly
when the JSON is read, not later.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


def to_plain(obj: Any) -> Any:
    """Dataclasses become dicts, tuples lists; ``None`` values of dataclass fields are kept."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = 2) -> str:
    """Stable JSON text (sorted keys) of a dataclass."""
    return json.dumps(to_plain(obj), indent=indent, sort_keys=True)


@cache
def _adapter(cls: type) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def from_plain(cls: type[T], data: Any) -> T:
    """``cls`` rebuilt from plain values (as :func:`to_plain` made them); raises ``ValueError`` on a mismatch."""
    from pydantic import ValidationError

    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as err:
        raise ValueError(f"not a valid {cls.__name__}: {err}") from None


def from_json(cls: type[T], text: str) -> T:
    """``cls`` from JSON text written by :func:`to_json`."""
    return from_plain(cls, json.loads(text))
