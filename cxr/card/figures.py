"""The card's figures: reliability diagrams as inline SVG (crisp at any zoom, printable, with a text
description for screen readers) and PNGs embedded as ``data:`` URIs, so the page needs no other file.

Colours are the Okabe-Ito palette, which readers with the common colour-vision deficiencies tell apart.
"""

from __future__ import annotations

import base64
import html

from cxr.learn.calibration import Calibration

BLUE, ORANGE, VERMILLION, GREY = "#0072B2", "#E69F00", "#D55E00", "#767676"
SIDE, LEFT, TOP, PLOT = 190, 34, 8, 146  # px: the square, the margins, the plot's side


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _x(value: float) -> float:
    return round(LEFT + value * PLOT, 1)


def _y(value: float) -> float:
    return round(TOP + (1 - value) * PLOT, 1)


def reliability_svg(finding: str, calibration: Calibration, key: str) -> str:
    """A reliability diagram: each bin's mean predicted probability against its observed positive share (dot
    area by the bin's images), the diagonal where a calibrated model lies; ``key`` makes its ids unique."""
    e = html.escape
    filled = [b for b in calibration.bins if b.n]
    most = max((b.n for b in filled), default=1)
    ece = "no labelled image" if calibration.ece is None else f"calibration error {calibration.ece:.3f}"
    described = "; ".join(
        f"{b.lo:.1f}-{b.hi:.1f}: predicted {b.mean_predicted:.2f}, observed {b.observed:.2f}, {b.n} images"
        for b in filled
    )
    parts = [
        f'<svg class="reliability" viewBox="0 0 {SIDE} {SIDE}" width="{SIDE}" height="{SIDE}" role="img" '
        f'aria-labelledby="t-{key} d-{key}" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="t-{key}">Reliability diagram, {e(finding)}: {ece}</title>',
        f'<desc id="d-{key}">{e(described) or "no bins"}</desc>',
        f'<rect x="{LEFT}" y="{TOP}" width="{PLOT}" height="{PLOT}" fill="#fff" stroke="{GREY}"/>',
        f'<line x1="{_x(0)}" y1="{_y(0)}" x2="{_x(1)}" y2="{_y(1)}" stroke="{GREY}" stroke-dasharray="4 3"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{_x(tick)}" y="{TOP + PLOT + 12}" text-anchor="middle">{tick:g}</text>')
        parts.append(f'<text x="{LEFT - 4}" y="{_y(tick) + 4}" text-anchor="end">{tick:g}</text>')
    parts.append(f'<text x="{_x(0.5)}" y="{SIDE - 2}" text-anchor="middle">predicted</text>')
    parts.append(f'<text transform="translate(10 {_y(0.5)}) rotate(-90)" text-anchor="middle">observed</text>')
    if filled:
        points = " ".join(f"{_x(b.mean_predicted)},{_y(b.observed)}" for b in filled)  # type: ignore[arg-type]
        parts.append(f'<polyline points="{points}" fill="none" stroke="{BLUE}" stroke-width="1.5"/>')
    for b in filled:
        radius = round(2 + 5 * (b.n / most) ** 0.5, 1)
        parts.append(
            f'<circle cx="{_x(b.mean_predicted)}" cy="{_y(b.observed)}" r="{radius}" '  # type: ignore[arg-type]
            f'fill="{BLUE}" fill-opacity="0.8"/>'
        )
    parts.append("</svg>")
    return "".join(parts)
