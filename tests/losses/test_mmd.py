"""Multi-kernel MMD^2 and the bidirectional, stop-gradient mutual distillation loss."""

import math

import pytest
import torch
from helpers import loss_references as ref

from tskd.losses import MutualDistillationLoss, md_direction, multi_kernel_mmd2


def _pairwise_d2(x, y):
    z = [list(map(float, r)) for r in torch.cat([x, y])]
    return [[sum((a - b) ** 2 for a, b in zip(zi, zj)) for zj in z] for zi in z]


def _reference_mmd2(x, y, diag=True, base=None):
    """Plain-Python MMD^2 written straight from the formula (no vectorisation).

    ``base`` fixes the bandwidth base instead of deriving it from x and y.
    """
    d2 = _pairwise_d2(x, y)
    t, n = len(d2), len(x)
    if base is None:
        base = sum(map(sum, d2)) / (t * t if diag else t * t - t)
    bws = [base / 4 * 2**i for i in range(5)]
    k = [[sum(math.exp(-d2[i][j] / bw) for bw in bws) for j in range(t)] for i in range(t)]

    def block_mean(rows, cols):
        return sum(k[i][j] for i in rows for j in cols) / (len(rows) * len(cols))

    xs, ys = range(n), range(n, t)
    return block_mean(xs, xs) + block_mean(ys, ys) - 2 * block_mean(xs, ys)


def test_hand_computed_two_points():
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    # d2 = [[0, 1], [1, 0]]; b = 2 / 4 = .5 -> bandwidths .125, .25, .5, 1, 2
    k01 = sum(math.exp(-1 / bw) for bw in (0.125, 0.25, 0.5, 1.0, 2.0))
    value = multi_kernel_mmd2(x, y, diag_in_bandwidth=True).item()
    assert value == pytest.approx(10 - 2 * k01, rel=1e-6)
    # excluding the diagonal (the default, as the authors' code): b = 2 / 2 = 1
    # -> bandwidths .25 ... 4
    k01 = sum(math.exp(-1 / bw) for bw in (0.25, 0.5, 1.0, 2.0, 4.0))
    assert multi_kernel_mmd2(x, y).item() == pytest.approx(10 - 2 * k01, rel=1e-6)


@pytest.mark.parametrize("diag", [True, False])
def test_matches_formula_on_random_sets(diag):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 4, generator=gen, dtype=torch.float64) + 0.5
    value = multi_kernel_mmd2(x, y, diag_in_bandwidth=diag).item()
    assert value == pytest.approx(_reference_mmd2(x, y, diag), rel=1e-9)


def test_batched_form_equals_per_set_calls():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 4, 6, generator=gen), torch.randn(3, 4, 6, generator=gen)
    batched = multi_kernel_mmd2(x, y)
    assert batched.shape == (3,)
    per_set = torch.stack([multi_kernel_mmd2(a, b) for a, b in zip(x, y)])
    torch.testing.assert_close(batched, per_set)


def test_zero_for_identical_sets_and_positive_for_shifted_sets():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 8, generator=gen)
    assert abs(multi_kernel_mmd2(x, x.clone()).item()) < 1e-6
    assert multi_kernel_mmd2(x, x + 2.0).item() > 0.1
    same = torch.ones(4, 8)  # zero spread: bandwidth floor keeps the result finite
    assert multi_kernel_mmd2(same, same).item() == 0.0


def _numeric_grads(x, y, base, eps=1e-6):
    """Central differences of the reference MMD^2 with the bandwidth base held at ``base``."""
    grads = []
    for which in (0, 1):
        g = torch.zeros_like((x, y)[which])
        for idx in range(g.numel()):
            values = []
            for sign in (1.0, -1.0):
                pair = [x.clone(), y.clone()]
                pair[which].view(-1)[idx] += sign * eps
                values.append(_reference_mmd2(*pair, base=base))
            g.view(-1)[idx] = (values[0] - values[1]) / (2 * eps)
        grads.append(g)
    return grads


def test_gradient_treats_bandwidth_as_constant():
    # torch.autograd.gradcheck does not apply: its finite differences would move the bandwidth,
    # which is detached by design. Compare with central differences at a frozen bandwidth base.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    analytic = torch.autograd.grad(multi_kernel_mmd2(x, y), (x, y))
    d2 = _pairwise_d2(x.detach(), y.detach())
    base = sum(map(sum, d2)) / (len(d2) ** 2 - len(d2))  # default: off-diagonal mean
    numeric = _numeric_grads(x.detach(), y.detach(), base)
    for a, n in zip(analytic, numeric):
        torch.testing.assert_close(a, n, rtol=1e-5, atol=1e-8)


def test_md_direction_stops_gradient_into_target():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    md_direction(x, y).backward()
    assert y.grad is None
    full_x, _ = torch.autograd.grad(multi_kernel_mmd2(x, y), (x, y))
    torch.testing.assert_close(x.grad, full_x)  # bandwidth is detached in both forms
    assert x.grad.abs().sum() > 0


def _aligned_batch(labels, seed=5):
    gen = torch.Generator().manual_seed(seed)
    b = len(labels)
    feats = [torch.randn(b, 3, generator=gen, dtype=torch.float64) for _ in range(3)]
    feats[2] = feats[2] + 1.0  # infrared offset
    return [f.requires_grad_(True) for f in feats], torch.tensor(labels)


@pytest.mark.parametrize("labels", [[3, 1, 3, 1, 7, 7], [0, 0, 0, 1, 1]],
                         ids=["equal-counts-shuffled", "unequal-counts-loop"])
@pytest.mark.parametrize(("form", "bandwidth"),
                         [("code", "offdiag"), ("paper", "offdiag"), ("code", "all"),
                          ("paper", "all")])
def test_md_value_and_gradient_match_the_formula(labels, form, bandwidth):
    feats, labels = _aligned_batch(labels)
    loss = MutualDistillationLoss(form=form, bandwidth=bandwidth)(*feats, labels)
    reference = ref.md(*feats, labels, form=form, offdiag=bandwidth == "offdiag")
    torch.testing.assert_close(loss, reference)
    grads = torch.autograd.grad(loss, feats)
    ref_grads = torch.autograd.grad(reference, feats)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
        assert g.abs().sum() > 0


def test_code_form_is_four_times_the_paper_form():
    feats, labels = _aligned_batch([0, 0, 1, 1, 2, 2])
    code = MutualDistillationLoss()(*feats, labels)
    paper = MutualDistillationLoss(form="paper")(*feats, labels)
    torch.testing.assert_close(code, 4 * paper)


def test_paper_form_with_all_bandwidth_is_the_first_implementation():
    """The switches md_form=paper md_bandwidth=all give the first release's number."""
    feats, labels = _aligned_batch([3, 1, 3, 1, 7, 7])
    old = MutualDistillationLoss(form="paper", bandwidth="all")(*feats, labels)
    # first release: per view, the mean over identities of 1/2 (both directions), m^2 bandwidth
    per_view = []
    for fv in feats[:2]:
        terms = [0.5 * (multi_kernel_mmd2(feats[2][labels == c], fv[labels == c].detach(),
                                          diag_in_bandwidth=True)
                        + multi_kernel_mmd2(fv[labels == c], feats[2][labels == c].detach(),
                                            diag_in_bandwidth=True))
                 for c in labels.unique()]
        per_view.append(torch.stack(terms).mean())
    torch.testing.assert_close(old, 0.5 * (per_view[0] + per_view[1]))


def test_md_one_side_requiring_grad():
    feats, labels = _aligned_batch([0, 0, 1, 1])
    vis1, vis2, ir = feats[0].detach(), feats[1].detach(), feats[2]
    MutualDistillationLoss()(vis1, vis2, ir, labels).backward()
    (ref_ir,) = torch.autograd.grad(ref.md(vis1, vis2, ir, labels), (ir,))
    torch.testing.assert_close(ir.grad, ref_ir)
    assert ir.grad.abs().sum() > 0


def test_md_switch_values_are_checked():
    with pytest.raises(ValueError, match="loss.md_form='half'"):
        MutualDistillationLoss(form="half")
    with pytest.raises(ValueError, match="loss.md_bandwidth='diag'"):
        MutualDistillationLoss(bandwidth="diag")


def test_autocast_does_not_lower_precision():
    gen = torch.Generator().manual_seed(6)
    x, y = 5.0 + torch.randn(4, 64, generator=gen), 5.0 + torch.randn(4, 64, generator=gen)
    exact = multi_kernel_mmd2(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = multi_kernel_mmd2(x, y)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, exact)
    torch.testing.assert_close(multi_kernel_mmd2(x.bfloat16(), y.bfloat16()),
                               multi_kernel_mmd2(x.bfloat16().float(), y.bfloat16().float()))


def test_md_shape_errors():
    feats, labels = _aligned_batch([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"must be \(B, C\)"):
        MutualDistillationLoss()(feats[0], feats[1][:3], feats[2], labels)
    with pytest.raises(ValueError, match="same C"):
        multi_kernel_mmd2(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="num_kernels >= 1"):
        multi_kernel_mmd2(torch.zeros(2, 3), torch.zeros(2, 3), num_kernels=0)
