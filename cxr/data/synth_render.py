"""Synthetic chest radiographs: a body with two lung fields and a heart, and one learnable sign per finding.

Each finding draws a distinct pattern (texture, shape, brighter or darker) inside a box, at a place
that loosely follows anatomy (cardiomegaly at the heart, effusion at a lung base, hernia below the
heart, the rest inside a lung field). The box is returned so that localization can be scored against it.
``strength`` scales every sign's contrast against the background noise (1.0: clearly visible at 64 px).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cxr.findings import FINDINGS

NOISE_SIGMA = 0.035
SIGN_AMPLITUDE = 0.22  # at strength 1.0, about six noise sigmas


@dataclass(frozen=True)
class Acquisition:
    """How the "scanner" renders: the knobs a shifted source turns (1, 1, 1, 0 is the default source)."""

    contrast: float = 1.0  # scales the anatomy's contrast around mid-gray
    noise: float = 1.0  # scales the noise sigma
    zoom: float = 1.0  # scales the body and lungs (and where signs land)
    offset: float = 0.0  # shifts the body right and down, as a share of the image side

    def __post_init__(self) -> None:
        if not (
            0.2 <= self.contrast <= 3 and 0 <= self.noise <= 5 and 0.6 <= self.zoom <= 1.4 and abs(self.offset) <= 0.15
        ):
            raise ValueError(f"acquisition out of range: {self}")


@dataclass(frozen=True, slots=True)
class Box:
    """A box in pixels of the rendered image."""

    finding: str
    x: float
    y: float
    w: float
    h: float


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    return coords[None, :], coords[:, None]  # x across columns, y down rows


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float, soft: float) -> np.ndarray:
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip((1.0 - r) / soft, 0.0, 1.0)


def _anatomy(
    size: int, rng: np.random.Generator, acq: Acquisition
) -> tuple[np.ndarray, dict[str, tuple[float, float, float, float]]]:
    xx, yy = _grid(size)
    dx, dy = rng.uniform(-0.025, 0.025, size=2) + acq.offset
    scale = rng.uniform(0.94, 1.06) * acq.zoom
    lungs = {
        "right": (0.32 + dx, 0.45 + dy, 0.15 * scale, 0.29 * scale),  # the patient's right, image left
        "left": (0.68 + dx, 0.45 + dy, 0.15 * scale, 0.29 * scale),
    }
    body = 0.12 + 0.45 * _ellipse(xx, yy, 0.5 + dx, 0.52 + dy, 0.44 * scale, 0.50 * scale, 0.08)
    img = np.broadcast_to(body, (size, size)).astype(np.float32, copy=True)
    ribs = 0.035 * np.cos(2 * np.pi * 8.0 * (yy - dy)).astype(np.float32)
    for cx, cy, rx, ry in lungs.values():
        lung = _ellipse(xx, yy, cx, cy, rx, ry, 0.15)
        img -= lung * (0.28 - ribs)
    img += 0.22 * _ellipse(xx, yy, 0.54 + dx, 0.62 + dy, 0.12 * scale, 0.11 * scale, 0.3)
    img *= rng.uniform(0.9, 1.1)
    if acq.contrast != 1.0:
        img = 0.5 + (img - 0.5) * acq.contrast
    img += rng.normal(0.0, NOISE_SIGMA * acq.noise, size=(size, size)).astype(np.float32)
    return img, lungs


# Patterns on local coordinates u, v in [-1, 1] across the box; values in [-1, 1].
def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.clip((1.0 - np.sqrt(u * u + v * v)) / 0.25, 0.0, 1.0)


_PATTERNS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Atelectasis": lambda u, v: _disc(u, v) * (np.cos(np.pi * 2.5 * v) > 0),
    "Cardiomegaly": lambda u, v: _disc(u, v),
    "Effusion": lambda u, v: np.clip((v + 1.0) / 2.0, 0.0, 1.0) ** 0.5 * (np.abs(u) < 0.95),
    "Infiltration": lambda u, v: _disc(u, v) * (np.cos(np.pi * 2.0 * (u + v)) > 0),
    "Mass": lambda u, v: _disc(u, v),
    "Nodule": lambda u, v: _disc(u, v),
    "Pneumonia": lambda u, v: _disc(u, v) * ((np.cos(np.pi * 2.5 * u) * np.cos(np.pi * 2.5 * v)) > 0.25),
    "Pneumothorax": lambda u, v: -np.clip((1.0 - np.sqrt(u * u + v * v)) / 0.15, 0.0, 1.0),
    "Consolidation": lambda u, v: np.clip((1.0 - np.maximum(np.abs(u), np.abs(v))) / 0.2, 0.0, 1.0),
    "Edema": lambda u, v: _disc(u, v) * (np.cos(np.pi * 2.5 * u) > 0),
    "Emphysema": lambda u, v: -0.8 * _disc(u, v),
    "Fibrosis": lambda u, v: _disc(u, v) * (np.maximum(np.cos(np.pi * 3 * u), np.cos(np.pi * 3 * v)) > 0.7),
    "Pleural_Thickening": lambda u, v: (np.abs(np.sqrt(u * u + v * v) - 0.75) < 0.2).astype(np.float32),
    "Hernia": lambda u, v: _disc(u, v) * (v < 0.3),
}

# Box width and height as a share of the image side.
_BOX_SIZE: dict[str, tuple[float, float]] = {
    "Atelectasis": (0.20, 0.14),
    "Cardiomegaly": (0.36, 0.30),
    "Effusion": (0.22, 0.13),
    "Infiltration": (0.20, 0.20),
    "Mass": (0.15, 0.15),
    "Nodule": (0.07, 0.07),
    "Pneumonia": (0.20, 0.20),
    "Pneumothorax": (0.16, 0.16),
    "Consolidation": (0.16, 0.16),
    "Edema": (0.20, 0.20),
    "Emphysema": (0.20, 0.20),
    "Fibrosis": (0.20, 0.20),
    "Pleural_Thickening": (0.17, 0.17),
    "Hernia": (0.16, 0.12),
}
assert set(_PATTERNS) == set(FINDINGS) == set(_BOX_SIZE)


def _place(
    finding: str, w: float, h: float, lungs: dict[str, tuple[float, float, float, float]], rng: np.random.Generator
) -> tuple[float, float]:
    """Centre of a sign, as a share of the image side."""
    cx_r, cy_r, rx, ry = lungs["right"]
    cx_l, _, _, _ = lungs["left"]
    centre_x, centre_y = (cx_r + cx_l) / 2, cy_r  # the body's centre line, after offset and zoom
    if finding == "Cardiomegaly":
        return centre_x + 0.04 + rng.uniform(-0.03, 0.03), centre_y + 0.15 + rng.uniform(-0.03, 0.03)
    if finding == "Hernia":
        return centre_x + rng.uniform(-0.05, 0.05), centre_y + 0.35 + rng.uniform(-0.02, 0.03)
    cx = cx_r if rng.random() < 0.5 else cx_l
    if finding == "Effusion":
        return cx + rng.uniform(-0.04, 0.04), cy_r + ry * 0.72 + rng.uniform(-0.03, 0.03)
    if finding == "Pneumothorax":
        return cx + rng.uniform(-0.05, 0.05), cy_r - ry * 0.6 + rng.uniform(-0.04, 0.04)
    # anywhere inside the lung field, the whole box inside it as far as the field allows
    px = rng.uniform(-1.0, 1.0) * max(rx - w / 2, 0.0)
    py = rng.uniform(-1.0, 1.0) * max(ry - h / 2, 0.0) * 0.85
    return cx + px, cy_r + py


def render(
    size: int,
    findings: list[str],
    rng: np.random.Generator,
    strength: float = 1.0,
    acquisition: Acquisition | None = None,
) -> tuple[np.ndarray, list[Box]]:
    """One synthetic radiograph (uint8, ``size`` x ``size``) with a sign for each finding, and their boxes."""
    acq = acquisition or Acquisition()
    img, lungs = _anatomy(size, rng, acq)
    boxes: list[Box] = []
    for finding in findings:
        bw, bh = _BOX_SIZE[finding]
        jitter = rng.uniform(0.8, 1.2)
        w, h = bw * jitter, bh * jitter
        cx, cy = _place(finding, w, h, lungs, rng)
        x0 = int(round(np.clip(cx - w / 2, 0.0, 1.0 - w) * size))
        y0 = int(round(np.clip(cy - h / 2, 0.0, 1.0 - h) * size))
        pw, ph = max(int(round(w * size)), 3), max(int(round(h * size)), 3)
        pw, ph = min(pw, size - x0), min(ph, size - y0)
        u = ((np.arange(pw, dtype=np.float32) + 0.5) / pw * 2.0 - 1.0)[None, :]
        v = ((np.arange(ph, dtype=np.float32) + 0.5) / ph * 2.0 - 1.0)[:, None]
        amplitude = SIGN_AMPLITUDE * strength * rng.uniform(0.8, 1.2)
        img[y0 : y0 + ph, x0 : x0 + pw] += amplitude * _PATTERNS[finding](u, v).astype(np.float32)
        boxes.append(Box(finding, float(x0), float(y0), float(pw), float(ph)))
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), boxes
