"""The weighted binary cross-entropy of DESIGN.md, from logits.

    L(x) = -(w_pos * y * log f(x) + w_neg * (1 - y) * log(1 - f(x)))

summed over the 14 findings (the multi-task loss) and averaged over the batch, with ``f = sigmoid``
computed through ``logsigmoid`` for stability.

How it differs from ``torch.nn.BCEWithLogitsLoss(pos_weight=p)``: that loss scales only the positive
term (by ``p``), never the negative one, and by default averages over batch *and* findings. With
``p = w_pos / w_neg``, ``reduction="none"``, a sum over findings and a factor ``w_neg`` per finding,
the two agree (the tests check it); with ``w_pos = freq_neg`` and ``w_neg = freq_pos`` the rare
positives and the common negatives then contribute equally, which is the point.

Missing labels: a target of NaN means the source does not label that finding for that image (missing, not
negative). Such an entry contributes nothing, to the loss or to the gradient: its target is replaced by 0
before the arithmetic (``NaN * 0`` is NaN, and would reach the gradient through the product) and its term is
masked out, so the gradient of its logit is exactly 0. The batch average still divides by the batch size,
so a batch without NaN (NIH) gives exactly the loss and gradients of the unmasked formula.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class WeightedBCE(nn.Module):
    """Per-finding weighted BCE; without weights it is the plain multi-label BCE (w_pos = w_neg = 1)."""

    def __init__(self, w_pos: Sequence[float] | None = None, w_neg: Sequence[float] | None = None) -> None:
        super().__init__()
        if (w_pos is None) != (w_neg is None):
            raise ValueError("give both w_pos and w_neg, or neither")
        if w_pos is not None and len(w_pos) != len(w_neg or ()):
            raise ValueError(f"w_pos has {len(w_pos)} values, w_neg {len(w_neg or ())}")
        self.register_buffer("w_pos", None if w_pos is None else torch.tensor(w_pos, dtype=torch.float32))
        self.register_buffer("w_neg", None if w_neg is None else torch.tensor(w_neg, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        targets = targets.float()
        labelled = ~torch.isnan(targets)
        targets = torch.where(labelled, targets, 0.0)
        pos = targets * F.logsigmoid(logits)
        neg = (1.0 - targets) * F.logsigmoid(-logits)
        if self.w_pos is not None:
            pos = pos * self.w_pos
            neg = neg * self.w_neg
        return -torch.where(labelled, pos + neg, 0.0).sum(dim=1).mean()
