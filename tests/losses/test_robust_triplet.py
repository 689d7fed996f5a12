"""DART's robust triplet: hand-computed cases, a per-anchor loop reference written from DART's
case analysis, and the degenerate confidences (all confident, none confident)."""

import math

import pytest
import torch

from tskd.losses import BatchHardTriplet, RobustTriplet


def _reference(feats, labels, w, logits, u, margin=0.3, thr=0.5, positive="random",
               modality=None, cases=None):
    """One anchor at a time, the branches in DART's order. u (N, 2): the module's documented
    draws (column 0 picks the positive, column 1 the confident replacement)."""
    n = len(labels)
    f = feats.double().tolist()
    lab, conf = labels.tolist(), [x >= thr for x in w.tolist()]
    pred = logits.argmax(1).tolist()

    def d(i, j):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(f[i], f[j])))

    def choose(i, cands, col):
        if positive == "hardest":
            return max(cands, key=lambda j: d(i, j))
        return cands[int(float(u[i, col]) * len(cands))]

    total, count = 0.0, 0
    for i in range(n):
        scope = [j for j in range(n) if modality is None or modality[j] == modality[i]]
        positives = [j for j in scope if j != i and lab[j] == lab[i]]
        negatives = [j for j in scope if lab[j] != lab[i]]
        if not conf[i] or not positives or not negatives:
            continue

        p = choose(i, positives, 0)
        neg = min(negatives, key=lambda j: d(i, j))
        false_neg = pred[neg] == lab[i]
        if conf[p] and (conf[neg] or not false_neg):
            case, ap, an = "TP-TN", d(i, p), d(i, neg)
        elif conf[p]:  # TP-FN: the closest confident negative replaces the hard negative
            ranked = sorted(negatives, key=lambda j: d(i, j))
            repl = next((j for j in ranked if conf[j]), neg)
            case, ap, an = "TP-FN", (d(i, p) + d(i, neg)) / 2, d(i, repl)
        elif conf[neg] or not false_neg:  # FP-TN: a confident positive replaces p
            good = [j for j in positives if conf[j]]
            repl = choose(i, good, 1) if good else p
            case, ap, an = "FP-TN", d(i, repl), (d(i, p) + d(i, neg)) / 2
        else:  # FP-FN: the roles swap
            case, ap, an = "FP-FN", d(i, neg), d(i, p)
        total += max(0.0, ap - an + margin)
        count += 1
        if cases is not None:
            cases.add(case)
    return total / count if count else 0.0


def _batch(seed, slots=6, ids=3, classes=3, c=4):
    """A [view1; view2; infrared] batch: slot j of every block shares one identity."""
    g = torch.Generator().manual_seed(seed)
    slot_ids = torch.arange(slots) % ids
    labels = slot_ids.repeat(3)
    modality = torch.tensor([0] * 2 * slots + [1] * slots)
    feats = torch.randn(3 * slots, c, generator=g, dtype=torch.float64)
    w = torch.rand(3 * slots, generator=g, dtype=torch.float64)
    logits = torch.randn(3 * slots, classes, generator=g)
    return feats, labels, modality, w, logits


def _col(values):
    return torch.tensor(values, dtype=torch.float64)[:, None]


def test_hand_computed_fp_fn_and_fp_tn():
    # 1-D feats 0, 1, 2, 5; labels 0, 0, 1, 1; only anchors 0 and 3 confident
    feats, labels = _col([0.0, 1.0, 2.0, 5.0]), torch.tensor([0, 0, 1, 1])
    w = torch.tensor([0.9, 0.2, 0.1, 0.9])
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # argmax 0 0 0 1
    mod = torch.zeros(4, dtype=torch.long)
    # anchor 0: p=1 (d 1, unconfident), n=2 (d 2, unconfident, predicted 0 = FN) -> swapped:
    #   relu(2 - 1 + 4) = 5
    # anchor 3: p=2 (d 3, unconfident), n=1 (d 4, predicted 0: not FN) -> FP-TN, no confident
    #   positive left so p stays: relu(3 - (3 + 4) / 2 + 4) = 3.5
    loss = RobustTriplet(margin=4.0)(feats, labels, mod, w, logits)
    assert loss.item() == pytest.approx((5 + 3.5) / 2)


def test_hand_computed_tp_fn_uses_the_closest_confident_negative():
    feats, labels = _col([0.0, 1.0, 2.0, 5.0]), torch.tensor([0, 0, 1, 1])
    w = torch.tensor([0.9, 0.9, 0.1, 0.9])
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    mod = torch.zeros(4, dtype=torch.long)
    # anchor 0: p=1 (d 1), n=2 (d 2, FN) -> ap (1 + 2) / 2, an d(0, 3) = 5: relu(1.5 - 5 + 4)
    # anchor 1: p=0 (d 1), n=2 (d 1, FN) -> ap 1, an d(1, 3) = 4: relu(1 - 4 + 4) = 1
    # anchor 3: p=2 unconfident, n=1 (d 4) confident -> FP-TN: relu(3 - 3.5 + 4) = 3.5
    loss = RobustTriplet(margin=4.0)(feats, labels, mod, w, logits)
    assert loss.item() == pytest.approx((0.5 + 1 + 3.5) / 3)


@pytest.mark.parametrize("per_modality", [False, True])
@pytest.mark.parametrize("positive", ["random", "hardest"])
def test_matches_the_per_anchor_reference(positive, per_modality):
    cases = set()
    for seed in range(12):
        feats, labels, modality, w, logits = _batch(seed)
        u = torch.rand((18, 2), generator=torch.Generator().manual_seed(100 + seed))
        loss = RobustTriplet(positive=positive, per_modality=per_modality)(
            feats, labels, modality, w, logits, generator=torch.Generator().manual_seed(100 + seed))
        if per_modality:  # mean over the modality groups of each group's mean
            parts = []
            for m in (0, 1):
                keep = modality == m
                idx = keep.nonzero().squeeze(1)
                r = _reference(feats[idx], labels[idx], w[idx], logits[idx], u[idx],
                               positive=positive, cases=cases)
                if any(w[idx] >= 0.5):
                    parts.append(r)
            expected = sum(parts) / len(parts)
        else:
            expected = _reference(feats, labels, w, logits, u, positive=positive, cases=cases)
        assert loss.item() == pytest.approx(expected, abs=1e-9)
    assert cases == {"TP-TN", "TP-FN", "FP-TN", "FP-FN"}  # every branch was exercised


def test_all_confident_hardest_is_batch_hard_and_random_is_below_it():
    for seed in range(5):
        feats, labels, modality, _, logits = _batch(seed)
        ones = torch.ones(18, dtype=torch.float64)
        for per_mod in (False, True):
            bh = BatchHardTriplet(0.3, per_modality=per_mod)(feats, labels, modality)
            hard = RobustTriplet(positive="hardest", per_modality=per_mod)(
                feats, labels, modality, ones, logits)
            torch.testing.assert_close(hard, bh)
            rnd = RobustTriplet(per_modality=per_mod)(feats, labels, modality, ones, logits)
            assert rnd.item() <= bh.item() + 1e-12


def test_no_confident_anchor_gives_a_connected_zero():
    feats, labels, modality, w, logits = _batch(0)
    feats.requires_grad_(True)
    loss = RobustTriplet()(feats, labels, modality, torch.full_like(w, 0.49), logits)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(feats.grad) == 0


def test_gradients_flow_and_the_draws_follow_the_generator():
    feats, labels, modality, w, logits = _batch(3)
    feats.requires_grad_(True)
    loss = RobustTriplet()(feats, labels, modality, w, logits,
                           generator=torch.Generator().manual_seed(7))
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    again = RobustTriplet()(feats, labels, modality, w, logits,
                            generator=torch.Generator().manual_seed(7))
    assert again.item() == loss.item()
    torch.manual_seed(11)  # no generator: torch's global one
    a = RobustTriplet()(feats, labels, modality, w, logits)
    torch.manual_seed(11)
    assert RobustTriplet()(feats, labels, modality, w, logits).item() == a.item()


def test_threshold_is_inclusive():
    feats, labels = _col([0.0, 1.0, 2.0, 5.0]), torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[0.0, 1.0]] * 4)  # never a false negative for label 0
    mod = torch.zeros(4, dtype=torch.long)
    w = torch.tensor([0.5, 0.5, 0.5, 0.4])  # anchors 0, 1, 2 confident at w == 0.5
    got = RobustTriplet(margin=0.3, threshold=0.5)(feats, labels, mod, w, logits)
    u = torch.zeros(4, 2)
    assert got.item() > 0  # nothing would count with a strict threshold
    assert got.item() == pytest.approx(_reference(feats, labels, w, logits, u))


def test_bad_inputs_are_refused():
    feats, labels, modality, w, logits = _batch(0)
    loss = RobustTriplet()
    with pytest.raises(ValueError, match="logits"):
        loss(feats, labels, modality, w[:-1], logits)
    with pytest.raises(ValueError, match="no valid triplet anchor"):
        loss(feats, torch.zeros_like(labels), modality, w, logits)
    with pytest.raises(ValueError, match="positive must be one of"):
        RobustTriplet(positive="semi-hard")
    with pytest.raises(ValueError, match="threshold"):
        RobustTriplet(threshold=1.5)
    with pytest.raises(ValueError, match="margin"):
        RobustTriplet(margin=-1.0)
