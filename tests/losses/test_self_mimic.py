"""Prototype bank arithmetic (count/weight norms, cross-rank reduce, unseen slots) and SM."""

import pytest
import torch
from helpers import loss_references as references

from tskd.losses import PrototypeBank, SelfMimicLoss

F_EPOCH = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, 4.0]])
LABELS = torch.tensor([0, 0, 1, 2])
SLOTS = torch.tensor([0, 0, 2, 1])
WEIGHTS = torch.tensor([1.0, 3.0, 0.5, 0.0])


def _bank(norm: str = "weight") -> PrototypeBank:
    bank = PrototypeBank(3, num_slots=3, dim=2, norm=norm)
    bank.accumulate(F_EPOCH, LABELS, SLOTS, WEIGHTS)
    bank.finalize()
    return bank


def test_finalize_gives_weighted_means_and_resets_sums():
    bank = _bank()
    # (0, 0): (1 * [1, 0] + 3 * [3, 2]) / 4; (1, 2): [5, 5]; (2, 1) only had weight 0
    torch.testing.assert_close(bank.prototypes[0, 0], torch.tensor([2.5, 1.5]))
    torch.testing.assert_close(bank.prototypes[1, 2], torch.tensor([5.0, 5.0]))
    expected_valid = torch.zeros(3, 3, dtype=torch.bool)
    expected_valid[0, 0] = expected_valid[1, 2] = True
    assert torch.equal(bank.valid, expected_valid)
    assert torch.all(bank.prototypes[2, 1] == 0)
    assert torch.all(bank.wsum == 0) and torch.all(bank.weight_sum == 0)
    assert torch.all(bank.count == 0)


def test_count_norm_divides_by_the_number_of_slots():
    """The default (the authors' Eq. 8-9 code): sum of w f over the count, not over sum w."""
    bank = _bank("count")
    # (0, 0): (1 * [1, 0] + 3 * [3, 2]) / 2 slots; (1, 2): .5 * [5, 5] / 1; (2, 1): 0 * f / 1
    torch.testing.assert_close(bank.prototypes[0, 0], torch.tensor([5.0, 3.0]))
    torch.testing.assert_close(bank.prototypes[1, 2], torch.tensor([2.5, 2.5]))
    assert bank.valid[2, 1]  # seen with weight 0: a zero prototype that exists
    torch.testing.assert_close(bank.prototypes[2, 1], torch.zeros(2))
    assert PrototypeBank(3, dim=2).norm == "count"


def test_accumulate_sums_over_calls():
    bank = PrototypeBank(3, dim=2, norm="weight")
    bank.accumulate(F_EPOCH[:1], LABELS[:1], SLOTS[:1], WEIGHTS[:1])
    bank.accumulate(F_EPOCH[1:2], LABELS[1:2], SLOTS[1:2], WEIGHTS[1:2])
    torch.testing.assert_close(bank.wsum[0, 0], torch.tensor([10.0, 6.0]))
    assert bank.weight_sum[0, 0].item() == 4.0 and bank.count[0, 0].item() == 2.0
    bank.finalize()
    torch.testing.assert_close(bank.prototypes[0, 0], torch.tensor([2.5, 1.5]))


def test_unseen_slots_keep_previous_prototype():
    bank = _bank()
    bank.accumulate(torch.tensor([[7.0, 9.0]]), torch.tensor([1]), torch.tensor([2]),
                    torch.tensor([0.2]))
    bank.finalize()
    torch.testing.assert_close(bank.prototypes[1, 2], torch.tensor([7.0, 9.0]))
    torch.testing.assert_close(bank.prototypes[0, 0], torch.tensor([2.5, 1.5]))
    assert bank.valid[0, 0] and bank.valid[1, 2] and not bank.valid[2, 1]


@pytest.mark.parametrize("norm", ["count", "weight"])
def test_reduce_callback_combines_two_ranks(norm):
    rank0, rank1 = PrototypeBank(3, dim=2, norm=norm), PrototypeBank(3, dim=2, norm=norm)
    rank0.accumulate(F_EPOCH[:1], LABELS[:1], SLOTS[:1], WEIGHTS[:1])
    rank1.accumulate(F_EPOCH[1:], LABELS[1:], SLOTS[1:], WEIGHTS[1:])
    sums = ("wsum", "weight_sum", "count")
    totals = [getattr(rank0, n) + getattr(rank1, n) for n in sums]
    for bank in (rank0, rank1):
        # what a DDP sum-reduce returns on every rank, in the order finalize asks for them
        seen, out = [], iter(totals)

        def all_reduce_sum(t, seen=seen, out=out):
            seen.append(tuple(t.shape))
            return next(out).clone()

        bank.finalize(reduce=all_reduce_sum)
        assert seen == [(3, 3, 2), (3, 3), (3, 3)]
    reference = _bank(norm)
    for bank in (rank0, rank1):
        torch.testing.assert_close(bank.prototypes, reference.prototypes)
        assert torch.equal(bank.valid, reference.valid)


def test_running_sums_are_not_buffers_but_are_checkpointed():
    """DDP broadcasts buffers from rank 0 before each forward: the sums must not be buffers."""
    bank = _bank()
    bank.accumulate(F_EPOCH, LABELS, SLOTS, WEIGHTS)  # a half-finished epoch
    assert {name for name, _ in bank.named_buffers()} == {"prototypes", "valid"}
    state = bank.state_dict()
    assert set(state) == {"prototypes", "valid", "_extra_state"}
    restored = PrototypeBank(3, dim=2, norm="weight")
    restored.load_state_dict(state)
    for name in ("prototypes", "valid", "wsum", "weight_sum", "count"):
        assert torch.equal(getattr(restored, name), getattr(bank, name))
    restored.finalize()
    bank.finalize()
    assert torch.equal(restored.prototypes, bank.prototypes)
    # the saved state is a copy: accumulating more does not change a checkpoint already taken
    before = state["_extra_state"]["wsum"].clone()
    bank.accumulate(F_EPOCH, LABELS, SLOTS, WEIGHTS)
    assert torch.equal(state["_extra_state"]["wsum"], before)


def test_sm_is_zero_without_prototypes_and_pulls_nothing():
    f = (torch.ones(4, 2) * 3).requires_grad_(True)
    loss = SelfMimicLoss("l2")(f, LABELS, SLOTS, torch.ones(4), PrototypeBank(3, dim=2))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(f.grad == 0)  # a pull towards zero vectors would give 2 * f / M here


def _sm_batch():
    f = torch.tensor([[3.5, 0.5], [1.0, 1.0], [5.0, 7.0]], requires_grad=True)
    labels, slots = torch.tensor([0, 2, 1]), torch.tensor([0, 0, 2])
    return f, labels, slots, torch.tensor([0.5, 1.0, 1.0])


@pytest.mark.parametrize(("metric", "expected"), [("l1", 0.75), ("l2", 2.5)])
def test_l1_and_l2_values_mean_over_samples_with_prototype(metric, expected):
    f, labels, slots, w = _sm_batch()
    # sample 0 vs [2.5, 1.5]: l1 .5 * 1, l2 .5 * 2; sample 1 has no prototype (skipped);
    # sample 2 vs [5, 5]: l1 1 * mean(0, 2) = 1, l2 4 -> mean over the 2 valid samples
    loss = SelfMimicLoss(metric, form="mean")(f, labels, slots, w, _bank())
    assert loss.item() == pytest.approx(expected)


def test_prototypes_get_no_gradient_and_gradcheck():
    bank = _bank().double()
    protos = bank.prototypes.clone()
    f, labels, slots, w = _sm_batch()
    f = f.detach().double().requires_grad_(True)
    loss = SelfMimicLoss("l2", form="mean")(f, labels, slots, w.double(), bank)
    loss.backward()
    assert not bank.prototypes.requires_grad and torch.equal(bank.prototypes, protos)
    # l2 gradient: w_i * 2 (f_i - p) / V with V = 2 valid samples; sample 1 untouched
    torch.testing.assert_close(f.grad, torch.tensor([[0.5, -0.5], [0.0, 0.0], [0.0, 2.0]],
                                                    dtype=torch.float64))
    for metric in ("l1", "l2"):
        sm = SelfMimicLoss(metric, form="mean")
        assert torch.autograd.gradcheck(lambda x, m=sm: m(x, labels, slots, w.double(), bank),
                                        (f.detach().clone().requires_grad_(True),))


def test_errors():
    bank = PrototypeBank(3, dim=2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        bank.accumulate(F_EPOCH, torch.tensor([0, 1, 2, 3]), SLOTS, WEIGHTS)
    with pytest.raises(ValueError, match="slots must lie"):
        bank.accumulate(F_EPOCH, LABELS, torch.tensor([0, 1, 2, 3]), WEIGHTS)
    with pytest.raises(ValueError, match=r"features must be \(M, 2\)"):
        bank.accumulate(torch.zeros(4, 5), LABELS, SLOTS, WEIGHTS)
    with pytest.raises(ValueError, match="dim"):
        PrototypeBank(3)
    with pytest.raises(ValueError, match="loss.sm_metric='cosine'"):
        SelfMimicLoss("cosine")
    with pytest.raises(ValueError, match="loss.sm_form='sum'"):
        SelfMimicLoss(form="sum")
    with pytest.raises(ValueError, match="loss.prototype_norm='max'"):
        PrototypeBank(3, dim=2, norm="max")
    # 4 samples with one infrared: not the aligned 3-view layout the code form averages over
    with pytest.raises(ValueError, match="aligned 3-view layout"):
        SelfMimicLoss()(F_EPOCH, LABELS, SLOTS, WEIGHTS, _bank())


def _aligned(seed: int, n: int = 6, ids: int = 4, dim: int = 5):
    """A toy 3-view batch, random confidences per view and a bank with some prototypes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, ids, (n,), generator=g)
    f = torch.randn(3 * n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3 * n, generator=g, dtype=torch.float64)
    bank = PrototypeBank(ids, dim=dim).double()
    bank.prototypes.copy_(torch.randn(ids, 3, dim, generator=g, dtype=torch.float64))
    bank.valid.copy_(torch.rand(ids, 3, generator=g) < 0.7)
    return f, y, w, bank


@pytest.mark.parametrize("form", ["code", "mean"])
@pytest.mark.parametrize("metric", ["l1", "l2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sm_value_and_gradient_match_a_per_sample_loop(form, metric, seed):
    f, y, w, bank = _aligned(seed)
    slots = torch.arange(3).repeat_interleave(len(y))
    loss = SelfMimicLoss(metric, form=form)(f, y.repeat(3), slots, w, bank)
    ref = references.sm(f, y, w, bank.prototypes, bank.valid, metric, form)
    torch.testing.assert_close(loss, ref)
    (g,) = torch.autograd.grad(loss, f)
    (g_ref,) = torch.autograd.grad(ref, f)
    torch.testing.assert_close(g, g_ref)


def test_code_form_weighs_infrared_like_both_visible_views():
    f, y, w, bank = _aligned(3)
    bank.valid.fill_(True)
    n, slots = len(y), torch.arange(3).repeat_interleave(len(y))
    with torch.no_grad():
        f[2 * n:] = bank.prototypes[y, 2] + 1.0  # infrared l1 distance 1, visible 0
        f[:2 * n] = torch.cat([bank.prototypes[y, 0], bank.prototypes[y, 1]])
    ones = torch.ones(3 * n, dtype=torch.float64)
    code = SelfMimicLoss(form="code")(f, y.repeat(3), slots, ones, bank)
    mean = SelfMimicLoss(form="mean")(f, y.repeat(3), slots, ones, bank)
    assert code.item() == pytest.approx(1.0) and mean.item() == pytest.approx(1 / 3)
