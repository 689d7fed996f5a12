"""Soft-identity CE: per-sample values and the confidence weighting, checked by hand."""

import math

import pytest
import torch

from tskd.losses import SoftIdentityLoss, per_sample_ce

# row 0: equal logits -> CE = ln 2; row 1: p(label 1) = 1 / (3 + 1) -> CE = ln 4
LOGITS = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
LABELS = torch.tensor([0, 1])


def test_per_sample_ce_matches_hand_values():
    ce = per_sample_ce(LOGITS, LABELS)
    assert ce.shape == (2,)
    torch.testing.assert_close(ce, torch.tensor([math.log(2.0), math.log(4.0)]))


def test_unweighted_loss_is_plain_mean_ce_without_smoothing():
    loss = SoftIdentityLoss()(LOGITS, LABELS)
    # label smoothing would change this value
    assert loss.item() == pytest.approx(1.5 * math.log(2.0), rel=1e-6)


def test_weighted_loss_is_mean_over_all_samples_of_w_times_ce():
    loss = SoftIdentityLoss()(LOGITS, LABELS, torch.tensor([1.0, 0.5]))
    # (1 * ln2 + 0.5 * ln4) / 2 = ln 2 (divided by N, not by the weight sum 1.5)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_zero_weight_removes_a_sample_and_its_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    weights = torch.tensor([0.0, 1.0], requires_grad=True)
    SoftIdentityLoss()(logits, LABELS, weights).backward()
    assert torch.all(logits.grad[0] == 0)
    # d/dlogits of CE_1 / N = (softmax - onehot) / 2 with softmax = (3/4, 1/4)
    torch.testing.assert_close(logits.grad[1], torch.tensor([0.375, -0.375]))
    assert weights.grad is None  # confidences are constants


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 1, 2])
    weights = torch.rand(5, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: SoftIdentityLoss()(z, labels, weights), (logits,))


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        SoftIdentityLoss()(LOGITS, LABELS, torch.ones(3))
    with pytest.raises(ValueError, match="labels must be"):
        per_sample_ce(LOGITS, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="logits must be"):
        per_sample_ce(torch.zeros(2, 2, 2), LABELS)
