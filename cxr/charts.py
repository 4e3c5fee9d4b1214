"""Charts as PNG bytes (matplotlib, Agg): prevalence per finding, and a manifest's before/after balance."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.findings import FINDINGS

if TYPE_CHECKING:  # types only: the data modules import this one
    from cxr.data.manifest import ManifestInfo
    from cxr.data.stats import LabelStats


def _figure(rows: int, cols: int, width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same chart, same bytes
    return buf.getvalue()


def prevalence_chart(stats: LabelStats, log: bool = False) -> bytes:
    """Positives vs. negatives per finding, one panel per split (``log``: logarithmic counts)."""
    splits = list(stats.splits)
    fig, axes = _figure(1, len(splits), 5.0 * len(splits), 5.5)
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
        ax.set_title(f"{name} (n = {stats.splits[name].n})")
        ax.set_xlabel("images" + (" (log scale)" if log else ""))
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    return _png(fig)


def balance_chart(info: ManifestInfo) -> bytes:
    """A manifest's share of positive draws per finding in train, before and after balancing."""
    before = info.train_prevalence["before"]
    after = info.train_prevalence["after"]
    fig, axes = _figure(1, 1, 7.0, 5.5)
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
    ax.set_title(f"manifest {info.digest}: {what}\nmost reused training image: x{info.reuse.max_repeat}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _png(fig)


def roc_pr_chart(labels: np.ndarray, probs: np.ndarray, title: str) -> bytes:
    """ROC (left) and precision-recall (right) curves of every finding with a defined AUROC."""
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    fig, axes = _figure(1, 2, 13.0, 6.0)
    roc_ax, pr_ax = axes[0]
    for i, finding in enumerate(FINDINGS):
        y, p = labels[:, i], probs[:, i]
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


def heatmap_overlay(
    image: np.ndarray, heatmap: np.ndarray, boxes: list[tuple[str, tuple[float, float, float, float], str]], title: str
) -> bytes:
    """A gray image with a jet-coloured heatmap blended over it, labelled boxes ((name, (x, y, w, h) in
    image px, colour)) and a title line; Pillow only (a few ms, where a matplotlib figure takes ~100)."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    scale = max(1, 512 // max(image.shape))  # small inputs are enlarged so labels stay legible
    gray = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    colour = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255.0
    blended = (0.65 * gray + 0.35 * colour).clip(0, 255).astype(np.uint8)
    picture = Image.fromarray(blended, mode="RGB")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (picture.width, picture.height + 16), "white")
    canvas.paste(picture, (0, 16))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), title, fill="black")
    for name, (x, y, w, h), col in boxes:
        x0, y0 = x * scale, y * scale + 16
        draw.rectangle([x0, y0, x0 + w * scale, y0 + h * scale], outline=col, width=2)
        draw.text((x0 + 2, max(y0 - 12, 16)), name, fill=col)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


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
