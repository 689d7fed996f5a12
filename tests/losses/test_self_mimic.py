"""Prototype bank arithmetic (weights, cross-rank reduce, unseen slots) and the SM loss."""

import pytest
import torch

from tskd.losses import PrototypeBank, SelfMimicLoss

F_EPOCH = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, 4.0]])
LABELS = torch.tensor([0, 0, 1, 2])
SLOTS = torch.tensor([0, 0, 2, 1])
WEIGHTS = torch.tensor([1.0, 3.0, 0.5, 0.0])


def _bank() -> PrototypeBank:
    bank = PrototypeBank(3, num_slots=3, dim=2)
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
    assert bank.has_prototypes


def test_accumulate_sums_over_calls():
    bank = PrototypeBank(3, dim=2)
    assert not bank.has_prototypes
    bank.accumulate(F_EPOCH[:1], LABELS[:1], SLOTS[:1], WEIGHTS[:1])
    bank.accumulate(F_EPOCH[1:2], LABELS[1:2], SLOTS[1:2], WEIGHTS[1:2])
    torch.testing.assert_close(bank.wsum[0, 0], torch.tensor([10.0, 6.0]))
    assert bank.weight_sum[0, 0].item() == 4.0
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


def test_reduce_callback_combines_two_ranks():
    rank0, rank1 = PrototypeBank(3, dim=2), PrototypeBank(3, dim=2)
    rank0.accumulate(F_EPOCH[:1], LABELS[:1], SLOTS[:1], WEIGHTS[:1])
    rank1.accumulate(F_EPOCH[1:], LABELS[1:], SLOTS[1:], WEIGHTS[1:])
    total_wsum = rank0.wsum + rank1.wsum
    total_weight = rank0.weight_sum + rank1.weight_sum
    calls = []

    def all_reduce_sum(t):  # what a DDP sum-reduce returns on every rank
        calls.append(tuple(t.shape))
        return (total_wsum if t.dim() == 3 else total_weight).clone()

    rank0.finalize(reduce=all_reduce_sum)
    rank1.finalize(reduce=all_reduce_sum)
    assert sorted(calls) == [(3, 3), (3, 3), (3, 3, 2), (3, 3, 2)]
    reference = _bank()
    for bank in (rank0, rank1):
        torch.testing.assert_close(bank.prototypes, reference.prototypes)
        assert torch.equal(bank.valid, reference.valid)


def test_state_is_checkpointed():
    bank = _bank()
    bank.accumulate(F_EPOCH, LABELS, SLOTS, WEIGHTS)  # a half-finished epoch
    state = bank.state_dict()
    assert set(state) == {"prototypes", "valid", "wsum", "weight_sum"}
    restored = PrototypeBank(3, dim=2)
    restored.load_state_dict(state)
    for name in state:
        assert torch.equal(getattr(restored, name), getattr(bank, name))


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
    loss = SelfMimicLoss(metric)(f, labels, slots, w, _bank())
    assert loss.item() == pytest.approx(expected)


def test_prototypes_get_no_gradient_and_gradcheck():
    bank = _bank().double()
    protos = bank.prototypes.clone()
    f, labels, slots, w = _sm_batch()
    f = f.detach().double().requires_grad_(True)
    loss = SelfMimicLoss("l2")(f, labels, slots, w.double(), bank)
    loss.backward()
    assert not bank.prototypes.requires_grad and torch.equal(bank.prototypes, protos)
    # l2 gradient: w_i * 2 (f_i - p) / V with V = 2 valid samples; sample 1 untouched
    torch.testing.assert_close(f.grad, torch.tensor([[0.5, -0.5], [0.0, 0.0], [0.0, 2.0]],
                                                    dtype=torch.float64))
    for metric in ("l1", "l2"):
        sm = SelfMimicLoss(metric)
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
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        SelfMimicLoss("cosine")
