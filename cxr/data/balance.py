"""How resampling balances the training rows: repeat counts per row, never copies of images.

A label is 1, 0, or NaN (missing: the row's source does not label the finding). A row that does not label
a finding is neither its positive nor its negative: it keeps its draw when that finding is balanced, and
a finding's share of positive draws counts only the draws of rows that label it.
"""

from __future__ import annotations

import numpy as np

from cxr.findings import FINDINGS


def balance_binary(y: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Repeat counts that make positives and negatives of one finding exactly equal (rows that do not label it
    keep one draw each)."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    repeat = np.ones(len(y), dtype=np.int64)
    minority, majority = (pos, neg) if len(pos) <= len(neg) else (neg, pos)
    if mode == "over":
        base, extra = divmod(len(majority), len(minority))
        repeat[minority] = base
        repeat[rng.choice(minority, size=extra, replace=False)] += 1
    else:
        repeat[majority] = 0
        repeat[rng.choice(majority, size=len(minority), replace=False)] = 1
    return repeat


MAX_GROWTH = 1000  # oversampling gives up beyond this many draws per training row


def oversample_to_floor(
    labels: np.ndarray, floor: float, rng: np.random.Generator, max_rounds: int = 1000
) -> np.ndarray:
    """Add repeats to the positives of the most under-represented finding until every share >= floor.

    A finding's share is its positive draws out of the draws of rows that label it (missing: NaN)."""
    known = (~np.isnan(labels)).astype(np.int64)
    labels = np.nan_to_num(labels, nan=0.0).astype(np.int64)
    repeat = np.ones(len(labels), dtype=np.int64)
    order = rng.permutation(len(labels))  # seeded tie-break among equally repeated rows
    for _ in range(max_rounds):
        if int(repeat.sum()) > MAX_GROWTH * len(labels):  # the findings keep diluting each other without end
            break
        positive_draws, draws = repeat @ labels, repeat @ known
        share = np.where(labels.any(axis=0), positive_draws / np.maximum(draws, 1), np.inf)  # no positive: skip
        f = int(np.argmin(share))
        if share[f] >= floor:
            return repeat
        need = int(np.ceil((floor * draws[f] - positive_draws[f]) / (1.0 - floor)))
        rows = order[labels[order, f] == 1]
        # spread the extra draws over the finding's positives, least repeated first
        rows = rows[np.argsort(repeat[rows], kind="stable")]
        base, extra = divmod(need, len(rows))
        repeat[rows] += base
        repeat[rows[:extra]] += 1
    raise ValueError(
        f"oversampling did not reach a floor of {floor} within {max_rounds} rounds or {MAX_GROWTH} times the "
        "training rows: raising one finding's share dilutes the others too much on this data; choose a lower --floor"
    )


def positive_share(labels: np.ndarray, repeat: np.ndarray) -> dict[str, float]:
    """Each finding's share of positive draws among the draws of rows that label it."""
    draws = repeat @ (~np.isnan(labels))
    positive = repeat @ np.nan_to_num(labels, nan=0.0)
    share = np.divide(positive, draws, out=np.zeros(len(FINDINGS)), where=draws > 0)
    return {f: float(v) for f, v in zip(FINDINGS, share, strict=True)}
