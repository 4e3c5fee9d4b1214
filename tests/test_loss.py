"""The weighted binary cross-entropy against torch's BCEWithLogitsLoss."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

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


def masked_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, WeightedBCE]:
    """Logits, targets with NaN (missing labels) at about a third of the entries, the mask, and a weighted loss."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 14, generator=g) * 3
    targets = (torch.rand(8, 14, generator=g) < 0.3).float()
    missing = torch.rand(8, 14, generator=g) < 0.35
    missing[0] = True  # an image with no label at all
    missing[:, 5] = True  # a finding no image labels
    freq_pos = torch.linspace(0.01, 0.3, 14)
    return (
        logits,
        targets.masked_fill(missing, float("nan")),
        missing,
        WeightedBCE((1 - freq_pos).tolist(), freq_pos.tolist()),
    )


def loss_and_grad(loss: WeightedBCE, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.clone().requires_grad_()
    value = loss(logits, targets)
    value.backward()
    return value.detach(), logits.grad


def test_a_missing_label_adds_nothing_the_loss_is_the_sum_over_the_labelled_entries_over_the_batch_size():
    logits, targets, missing, loss = masked_batch()
    value, _ = loss_and_grad(loss, logits, targets)
    x, y = logits.double(), targets.double()
    w_pos, w_neg = loss.w_pos.double(), loss.w_neg.double()
    terms = -(w_pos * y * F.logsigmoid(x) + w_neg * (1 - y) * F.logsigmoid(-x))
    expected = sum(terms[i, j].item() for i in range(8) for j in range(14) if not missing[i, j]) / 8
    assert torch.isfinite(value) and value.item() == pytest.approx(expected, rel=1e-6)


def test_a_missing_labels_logit_gets_a_zero_gradient_and_changes_nothing_else():
    logits, targets, missing, loss = masked_batch()
    value, grad = loss_and_grad(loss, logits, targets)
    assert torch.isfinite(grad).all() and torch.all(grad[missing] == 0)
    assert torch.all(grad[~missing] != 0)
    for other in (
        100.0,
        -100.0,
        0.0,
        float("inf"),
        -float("inf"),
    ):  # whatever the model says where the label is missing
        changed_value, changed_grad = loss_and_grad(loss, logits.masked_fill(missing, other), targets)
        assert torch.equal(changed_value, value) and torch.equal(changed_grad, grad)


def test_a_batch_with_no_label_at_all_has_zero_loss_and_zero_gradient():
    logits, _, _, loss = masked_batch()
    value, grad = loss_and_grad(loss, logits, torch.full_like(logits, float("nan")))
    assert value.item() == 0 and torch.all(grad == 0)


@pytest.mark.parametrize("weighted", [False, True])
def test_without_missing_labels_loss_and_gradients_are_bit_identical_to_the_unmasked_formula(batch, weighted):
    logits, y = batch
    freq_pos = torch.linspace(0.002, 0.2, 14)
    w_pos, w_neg = (1 - freq_pos, freq_pos) if weighted else (torch.ones(14), torch.ones(14))
    loss = WeightedBCE(w_pos.tolist(), w_neg.tolist()) if weighted else WeightedBCE()
    value, grad = loss_and_grad(loss, logits, y)
    x = logits.clone().requires_grad_()
    pos, neg = y * F.logsigmoid(x), (1.0 - y) * F.logsigmoid(-x)
    if weighted:
        pos, neg = pos * w_pos, neg * w_neg
    unmasked = -(pos + neg).sum(dim=1).mean()  # the loss before missing labels
    unmasked.backward()
    assert torch.equal(value, unmasked.detach()) and torch.equal(grad, x.grad)
