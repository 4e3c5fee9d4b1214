"""Charts as PNG bytes (matplotlib, Agg): prevalence per finding, and a manifest's before/after balance."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.findings import FINDINGS

if TYPE_CHECKING:  # types only: the data modules import this one
    from cxr.data.manifest import ManifestInfo
    from cxr.data.stats import LabelStats


# Heatmaps and boxes readers with a colour-vision deficiency tell apart: viridis (dark blue to yellow, even in
# lightness) and, for boxes, Okabe-Ito's sky blue (the truth) and vermillion (the model's).
HEATMAP_COLOURS = "viridis"
TRUTH_BOX, MODEL_BOX = "#56B4E9", "#D55E00"


def _figure(rows: int, cols: int, width: float, height: float, layout: str | None = None):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _legend_below(fig, ax) -> None:
    """The legend of ``ax``'s bars in one row under the panels, where it can cover no bar (a legend inside the
    axes sat on the bottom finding's bars). Needs a figure made with ``layout="constrained"``."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same chart, same bytes
    return buf.getvalue()


def prevalence_chart(stats: LabelStats, log: bool = False) -> bytes:
    """Positives vs. negatives per finding, one panel per split (``log``: logarithmic counts)."""
    return _png(prevalence_figure(stats, log))


def prevalence_figure(stats: LabelStats, log: bool = False):
    """The matplotlib figure of :func:`prevalence_chart`."""
    splits = list(stats.splits)
    fig, axes = _figure(1, len(splits), 5.0 * len(splits), 5.5, layout="constrained")
    y = np.arange(len(FINDINGS))
    for ax, name in zip(axes[0], splits, strict=True):
        part = stats.splits[name].findings
        pos = [part[f].n_pos for f in FINDINGS]
        neg = [part[f].n_neg for f in FINDINGS]
        ax.barh(y - 0.2, neg, height=0.4, color="#9aa5b1", label="negative")
        ax.barh(y + 0.2, pos, height=0.4, color="#d1495b", label="positive")
        ax.set_yticks(y, FINDINGS if ax is axes[0][0] else [""] * len(FINDINGS))
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
        per_source = stats.splits[name].sources
        mix = "\n" + ", ".join(f"{k} {v}" for k, v in per_source.items()) if len(per_source) > 1 else ""
        ax.set_title(f"{name} (n = {stats.splits[name].n}){mix}")
        ax.set_xlabel("images" + (" (log scale)" if log else ""))
    _legend_below(fig, axes[0][0])
    return fig


def balance_chart(info: ManifestInfo) -> bytes:
    """A manifest's share of positive draws per finding in train, before and after balancing (of the draws of
    images that label the finding); a mixed manifest's training rows per source under the title."""
    before = info.train_prevalence["before"]
    after = info.train_prevalence["after"]
    sources = "".join(f"\n{source}: {splits.get('train', 0)} training rows" for source, splits in info.sources.items())
    fig, axes = _figure(1, 1, 7.0, 5.5 + 0.25 * len(info.sources))
    ax = axes[0][0]
    y = np.arange(len(FINDINGS))
    ax.barh(y - 0.2, [100 * before[f] for f in FINDINGS], height=0.4, color="#9aa5b1", label="before")
    ax.barh(y + 0.2, [100 * after[f] for f in FINDINGS], height=0.4, color="#00798c", label="after")
    ax.set_yticks(y, FINDINGS)
    ax.invert_yaxis()
    ax.set_xlabel("share of training draws that are positive (%)")
    what = info.strategy + (f", target {info.target} ({info.mode})" if info.target else "")
    if info.floor:
        what += f", floor {100 * info.floor:.0f} %"
    title = f"manifest {info.digest}: {what}\nmost reused training image: x{info.reuse.max_repeat}"
    ax.set_title(title + (sources if info.mixed else ""))
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _png(fig)


def roc_pr_chart(labels: np.ndarray, probs: np.ndarray, title: str) -> bytes:
    """ROC (left) and precision-recall (right) curves of every finding with a defined AUROC, each on the rows
    where it is labelled (NaN labels are missing); a finding with no labelled row, or one class, is not drawn."""
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    from cxr.learn.metrics import known

    fig, axes = _figure(1, 2, 13.0, 6.0)
    roc_ax, pr_ax = axes[0]
    for i, finding in enumerate(FINDINGS):
        y, p = known(labels[:, i], probs[:, i])
        if not 0 < y.sum() < len(y):
            continue
        fpr, tpr, _ = roc_curve(y, p)
        precision, recall, _ = precision_recall_curve(y, p)
        roc_ax.plot(fpr, tpr, lw=1.2, label=f"{finding} {auc(fpr, tpr):.2f}")
        pr_ax.plot(recall, precision, lw=1.2, label=f"{finding} ({int(y.sum())} pos.)")
    roc_ax.plot([0, 1], [0, 1], color="#888", lw=0.8, ls="--")
    roc_ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC: {title}")
    pr_ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=f"precision-recall: {title}", ylim=(0, 1.02))
    roc_ax.legend(fontsize=7, loc="lower right")
    pr_ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _png(fig)


OVERLAY_MIN_SIDE = 256  # px: a smaller image is enlarged (smoothly) to this, so its labels stay legible
OVERLAY_MAX_SIDE = 2048  # px: a larger one is reduced to this (a PNG of 3000 px films, 14 of them, takes seconds)


OVERLAY_PNG_LEVEL = 1  # zlib level of overlay PNGs: 6x faster to write than Pillow's default 6, 15 % larger


def heatmap_overlay(
    image: np.ndarray, heatmap: np.ndarray, boxes: list[tuple[str, tuple[float, float, float, float], str]], title: str
) -> bytes:
    """A gray image at its own resolution with a heatmap (:data:`HEATMAP_COLOURS`) blended over it, labelled boxes and a
    title band above it; Pillow only, no matplotlib figure. Encoding the PNG takes most of its time: zlib
    level :data:`OVERLAY_PNG_LEVEL` (a 1024 px overlay: 0.07 s and 1.2 MB, against 0.42 s and 1.0 MB at 6).

    ``heatmap`` (values in [0, 1]) may be smaller than the image (the model's input size): it is upsampled
    bilinearly to the image's size. Boxes are ``(name, (x, y, w, h) in the image's pixels, colour)``; each
    label sits on a background of its box's colour, wholly inside the image, above its box where there is
    room, else inside or below it. Text is sized to the image. An image smaller than
    :data:`OVERLAY_MIN_SIDE` is enlarged smoothly to it, one larger than :data:`OVERLAY_MAX_SIDE` reduced to it.
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    height, width = image.shape
    scale = min(max(1.0, OVERLAY_MIN_SIDE / max(height, width)), OVERLAY_MAX_SIDE / max(height, width))
    size = (round(width * scale), round(height * scale))
    gray_image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L")
    if scale != 1:
        gray_image = gray_image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    heat = Image.fromarray(np.ascontiguousarray(heatmap, dtype=np.float32), mode="F")
    heat = np.asarray(heat.resize(size, Image.Resampling.BILINEAR))
    ramp = (colormaps[HEATMAP_COLOURS](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)  # 256 colours
    colour = Image.fromarray(ramp[(np.clip(heat, 0, 1) * 255).round().astype(np.uint8)], mode="RGB")
    blended = Image.blend(gray_image.convert("RGB"), colour, 0.35)  # 0.65 gray + 0.35 colour, in C

    text_px = max(11, round(max(size) / 40))  # 11 px at 256 px, 26 px at 1024 px
    pad = max(2, text_px // 4)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title, title_font = _fit(probe, title, size[0] - 2 * pad, text_px)
    band = _text_height(probe, title_font) + 2 * pad
    canvas = Image.new("RGB", (size[0], size[1] + band), "white")
    canvas.paste(blended, (0, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill="black", font=title_font, anchor="la")
    line = max(2, round(max(size) / 300))
    image_area = (2, band + 2, size[0] - 2, band + size[1] - 2)  # labels keep 2 px off the image's edges
    corners = [(x * scale, y * scale + band, (x + w) * scale, (y + h) * scale + band) for _, (x, y, w, h), _ in boxes]
    for corner, (_, _, col) in zip(corners, boxes, strict=True):
        draw.rectangle(corner, outline=col, width=line)
    taken: list[tuple[float, float, float, float]] = []  # labels last: no outline crosses one
    for corner, (name, _, col) in zip(corners, boxes, strict=True):
        text, label_font = _fit(draw, name, size[0] - 4 - 2 * pad, text_px)
        left, _, right, _ = draw.textbbox((0, 0), text, font=label_font, anchor="la")
        label_w, label_h = right - left + 2 * pad, _text_height(draw, label_font) + 2 * pad
        spot = _label_spot(corner, (label_w, label_h), image_area, taken)
        taken.append(spot)
        draw.rectangle(spot, fill=col)
        draw.text((spot[0] + pad, spot[1] + pad), text, fill=_contrast(col), font=label_font, anchor="la")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=OVERLAY_PNG_LEVEL)
    return buf.getvalue()


def _font(px: int):
    """Pillow's bundled font at ``px`` pixels (its fixed bitmap font where Pillow has no FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_height(draw, font) -> int:
    """The height of a line of text in ``font``, ascenders to descenders, whatever the letters."""
    _, top, _, bottom = draw.textbbox((0, 0), "Ag", font=font, anchor="la")
    return int(bottom - top)


def _fit(draw, text: str, max_width: float, px: int):
    """``text`` and a font no larger than ``px`` in which it fits ``max_width`` (down to 8 px; then shortened)."""
    while True:
        font = _font(px)
        if draw.textlength(text, font=font) <= max_width:
            return text, font
        if px > 8:
            px -= 1
            continue
        while len(text) > 1 and draw.textlength(text + "...", font=font) > max_width:
            text = text[:-1]
        return text + "...", font


def _label_spot(
    box: tuple[float, float, float, float],
    label: tuple[float, float],
    area: tuple[float, float, float, float],
    taken: list[tuple[float, float, float, float]],
) -> tuple[float, float, float, float]:
    """Where a label goes: above its box, else inside its top or bottom edge, else below it; shifted sideways to stay
    inside ``area`` (the image, not the title band), and clear of the labels already drawn where possible."""
    x0, y0, _, y1 = box
    w, h = label
    left = min(max(x0, area[0]), area[2] - w)
    spots = [(left, y) for y in (y0 - h, y0, y1 - h, y1)]
    inside = [(a, b) for a, b in spots if area[1] <= b and b + h <= area[3]]
    clamped = [(a, min(max(b, area[1]), area[3] - h)) for a, b in spots]
    for a, b in [*inside, *clamped]:
        spot = (a, b, a + w, b + h)
        if not any(spot[0] < t[2] and t[0] < spot[2] and spot[1] < t[3] and t[1] < spot[3] for t in taken):
            return spot
    a, b = clamped[0]
    return (a, b, a + w, b + h)


def _contrast(colour: str) -> str:
    """Black or white, whichever reads better on ``colour``."""
    from PIL import ImageColor

    r, g, b = ImageColor.getrgb(colour)[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 128 else "white"


def study_chart(summary: dict[str, Any], rare: tuple[str, ...]) -> tuple[bytes, bytes]:
    """Mean AUROC per strategy, in distribution and shifted (error bars: spread over seeds); and the rare findings."""
    strategies = list(summary)
    x = np.arange(len(strategies))
    fig, axes = _figure(1, 1, 7.0, 4.5)
    ax = axes[0][0]
    for k, (source, colour) in enumerate((("in_distribution", "#00798c"), ("shifted", "#d1495b"))):
        means = [summary[s][source]["mean_auroc"] or 0 for s in strategies]
        stds = [summary[s][source]["mean_auroc_std"] or 0 for s in strategies]
        ax.bar(
            x + (k - 0.5) * 0.38, means, width=0.38, yerr=stds, capsize=3, color=colour, label=source.replace("_", " ")
        )
    ax.set_xticks(x, strategies)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("mean AUROC over findings")
    ax.legend(loc="lower right")
    ax.set_title("imbalance strategies: mean AUROC (bars: spread over seeds)")
    fig.tight_layout()
    overall = _png(fig)
    fig, axes = _figure(1, len(rare), 5.0 * len(rare), 4.5)
    for ax, finding in zip(axes[0], rare, strict=True):
        for k, (source, colour) in enumerate((("in_distribution", "#00798c"), ("shifted", "#d1495b"))):
            pairs = [summary[s][source]["findings"][finding]["auroc"] for s in strategies]
            ax.bar(
                x + (k - 0.5) * 0.38,
                [p[0] or 0 for p in pairs],
                width=0.38,
                yerr=[p[1] or 0 for p in pairs],
                capsize=3,
                color=colour,
                label=source.replace("_", " "),
            )
        ax.set_xticks(x, strategies)
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{finding}: AUROC")
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    return overall, _png(fig)
