"""The weighted binary cross-entropy against torch's BCEWithLogitsLoss."""

from __future__ import annotations

import pytest
import torch

from cxr.learn.loss import WeightedBCE


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 14, generator=g) * 3, (torch.rand(16, 14, generator=g) < 0.2).float()


def test_unweighted_is_bce_summed_over_findings_and_averaged_over_the_batch(batch):
    logits, y = batch
    expected = torch.nn.BCEWithLogitsLoss(reduction="none")(logits, y).sum(dim=1).mean()
    assert torch.allclose(WeightedBCE()(logits, y), expected, atol=1e-6)


def test_weighted_equals_w_neg_times_bce_with_pos_weight_w_pos_over_w_neg(batch):
    logits, y = batch
    freq_pos = torch.linspace(0.002, 0.2, 14)
    w_pos, w_neg = 1 - freq_pos, freq_pos
    ours = WeightedBCE(w_pos.tolist(), w_neg.tolist())(logits, y)
    theirs = (
        (w_neg * torch.nn.BCEWithLogitsLoss(pos_weight=w_pos / w_neg, reduction="none")(logits, y)).sum(dim=1).mean()
    )
    assert torch.allclose(ours, theirs, rtol=1e-5)
    default_reduction = torch.nn.BCEWithLogitsLoss(pos_weight=w_pos / w_neg)(logits, y)
    assert not torch.allclose(ours, default_reduction)  # the mean over findings and unweighted negatives differ


def test_balanced_weights_give_positives_and_negatives_equal_total_weight():
    y = torch.zeros(100, 14)
    y[:5, 0] = 1  # 5 % prevalence in finding 0
    freq_pos = y.mean(0)
    loss = WeightedBCE((1 - freq_pos).tolist(), freq_pos.tolist())
    pos_weight = (loss.w_pos * y).sum(0)
    neg_weight = (loss.w_neg * (1 - y)).sum(0)
    assert torch.allclose(pos_weight[0], neg_weight[0])


def test_extreme_logits_stay_finite_and_gradients_flow():
    logits = torch.tensor([[80.0, -80.0] + [0.0] * 12], requires_grad=True)
    y = torch.tensor([[0.0, 1.0] + [0.0] * 12])
    value = WeightedBCE()(logits, y)
    value.backward()
    assert torch.isfinite(value) and value.item() == pytest.approx(160.0 + 12 * 0.6931, rel=1e-3)
    assert torch.isfinite(logits.grad).all()


def test_weights_must_come_in_pairs():
    with pytest.raises(ValueError, match="both"):
        WeightedBCE([1.0] * 14, None)
