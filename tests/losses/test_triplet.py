"""Batch-hard triplet: hardest positive/negative on hand-made 1-D and 2-D examples."""

import math

import pytest
import torch

from tskd.losses import BatchHardTriplet, euclidean_dist


def _col(values):
    return torch.tensor(values, dtype=torch.float64)[:, None]  # (N, 1) features


def test_hardest_positive_and_negative_1d():
    feats = _col([0.0, 2.0, 0.5, 1.0, 5.0])
    labels = torch.tensor([0, 0, 0, 1, 1])
    # per anchor (d_ap, d_an): (2, 1) (2, 1) (1.5, .5) (4, .5) (4, 3)
    # hinge with margin .3: 1.3, 1.3, 1.3, 3.8, 1.3 -> mean 1.8
    loss = BatchHardTriplet(margin=0.3)(feats, labels)
    assert loss.item() == pytest.approx(1.8)
    assert BatchHardTriplet(margin=0.0)(feats, labels).item() == pytest.approx(1.5)


def test_distance_is_euclidean_not_squared_and_lonely_anchor_skipped():
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # anchor 0: 5 - 4.5 + .3; anchor 1: 5 - sqrt(9.25) + .3; anchor 2 has no positive
    expected = ((5 - 4.5 + 0.3) + (5 - math.sqrt(9.25) + 0.3)) / 2
    assert BatchHardTriplet(0.3)(feats, labels).item() == pytest.approx(expected)


def test_euclidean_dist_values_and_finite_gradient_on_duplicates():
    feats = torch.tensor([[1.0, 1.0], [1.0, 1.0], [4.0, 5.0]], requires_grad=True)
    dist = euclidean_dist(feats)
    torch.testing.assert_close(dist[0, 2], torch.tensor(5.0))
    assert dist[0, 1].item() == pytest.approx(1e-6)  # sqrt of the 1e-12 clamp
    BatchHardTriplet(0.3)(feats, torch.tensor([0, 0, 1])).backward()
    assert torch.isfinite(feats.grad).all()


def test_distances_stay_float32_under_autocast():
    gen = torch.Generator().manual_seed(1)
    feats = 5.0 + torch.randn(6, 64, generator=gen)  # large norms: 16-bit expansion would cancel
    exact = euclidean_dist(feats)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = euclidean_dist(feats)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, exact)


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    # a large margin keeps every hinge active, away from its kink
    loss = BatchHardTriplet(margin=10.0)
    assert torch.autograd.gradcheck(lambda f: loss(f, labels), (feats,))


def _two_modality_batch():
    # visible: id0 at 0, 2; id1 at 1.5, 4. infrared: id0 at 10, 12; id1 at 20, 21
    feats = _col([0.0, 2.0, 1.5, 4.0, 10.0, 12.0, 20.0, 21.0])
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    modality = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    return feats, labels, modality


def test_per_modality_mines_inside_each_group_and_averages_groups():
    feats, labels, modality = _two_modality_batch()
    # visible hinges .8, 1.8, 2.3, .8 -> 1.425; infrared hinges all 0 -> 0
    loss = BatchHardTriplet(0.3, per_modality=True)(feats, labels, modality)
    assert loss.item() == pytest.approx((1.425 + 0.0) / 2)
    # whole-batch mining sees cross-modal pairs, e.g. anchor 0: d_ap = 12, d_an = 1.5
    assert BatchHardTriplet(0.3)(feats, labels, modality).item() > 5.0


def test_per_modality_skips_a_group_without_valid_anchor():
    feats, labels, modality = _two_modality_batch()
    labels = labels.clone()
    labels[4:] = 0  # infrared has no negative -> only the visible group counts
    loss = BatchHardTriplet(0.3, per_modality=True)(feats, labels, modality)
    assert loss.item() == pytest.approx(1.425)


def test_errors():
    feats, labels, _ = _two_modality_batch()
    with pytest.raises(ValueError, match="needs modality"):
        BatchHardTriplet(per_modality=True)(feats, labels)
    with pytest.raises(ValueError, match="no valid triplet anchor"):
        BatchHardTriplet()(feats, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        BatchHardTriplet()(feats, labels[:3])
    with pytest.raises(ValueError, match="margin"):
        BatchHardTriplet(margin=-1.0)
