"""Noisy/weak diagnostics against hand-computed shares and scikit-learn's ROC AUC."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tskd.core.errors import InputError
from tskd.supervision.diagnostics import auc, noise_diagnostics, weak_diagnostics


@pytest.mark.parametrize("seed", range(6))
def test_auc_matches_sklearn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    scores = rng.random(n)
    if seed % 2:  # heavy ties: a few distinct values
        scores = np.round(scores * 4) / 4
    positive = rng.random(n) < 0.4
    positive[0], positive[-1] = True, False  # both groups present
    assert auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)


def test_auc_hand_values_and_empty_groups():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered right
    assert auc([0.1, 0.4, 0.35, 0.8], np.array([False, False, True, True])) == 0.75
    assert auc([0.5, 0.5, 0.5], np.array([True, False, False])) == 0.5  # ties count 1/2
    assert math.isnan(auc([0.1, 0.2], np.array([True, True])))
    assert math.isnan(auc([0.1, 0.2], np.array([False, False])))


def test_noise_diagnostics_hand_computed():
    w = torch.tensor([0.9, 0.6, 0.5, 0.2, 0.7, 0.5], dtype=torch.float64)
    clean = torch.tensor([True, True, True, False, False, False])
    d = noise_diagnostics(w, clean)
    assert d["clean_w_above_half"] == pytest.approx(2 / 3)  # 0.5 is not above one half
    assert d["noisy_w_below_half"] == pytest.approx(1 / 3)  # nor below it
    # clean-over-noisy pairs: 0.9 beats 3, 0.6 beats 2, 0.5 beats 1 and ties 1 -> 6.5 of 9
    assert d["auc"] == pytest.approx(6.5 / 9)
    assert d["auc"] == pytest.approx(roc_auc_score(clean.numpy(), w.numpy()))
    assert d["mean_w_clean"] == pytest.approx(2.0 / 3)
    assert d["mean_w_noisy"] == pytest.approx(1.4 / 3)
    assert d["noisy_share"] == 0.5
    assert all(isinstance(v, float) for v in d.values())


def test_noise_diagnostics_without_noisy_samples_are_nan_there():
    d = noise_diagnostics(np.array([0.9, 0.3]), np.array([True, True]))
    assert d["clean_w_above_half"] == 0.5 and d["noisy_share"] == 0.0
    assert math.isnan(d["noisy_w_below_half"]) and math.isnan(d["mean_w_noisy"])
    assert math.isnan(d["auc"])


def test_noise_diagnostics_refuse_bad_input():
    with pytest.raises(InputError, match="same training images"):
        noise_diagnostics([0.5, 0.5], np.array([True]))
    with pytest.raises(InputError, match="boolean mask"):
        noise_diagnostics([0.5, 0.5], np.array([1, 0]))
    with pytest.raises(InputError, match="non-finite"):
        noise_diagnostics([0.5, float("nan")], np.array([True, False]))
    with pytest.raises(InputError, match="1-D"):
        noise_diagnostics(np.zeros((2, 2)), np.zeros((2, 2), dtype=bool))


LABELS = np.array([0, 1, 2, 2, 1, 0])
TRUE = np.array([0, 1, 1, 2, 0, 0])
PREVIOUS = np.array([0, 1, 1, 1, 1, 0])
W = np.array([1.0, 1.0, 0.2, 0.9, 0.4, 0.8])


@pytest.mark.parametrize("unlabelled", [np.array([2, 3, 4, 5]),
                                        np.array([False, False, True, True, True, True])])
def test_weak_diagnostics_hand_computed(unlabelled):
    # unlabelled rows 2..5: labels 2 2 1 0, true 1 2 0 0 -> right F T F T; previous 1 1 1 0
    d = weak_diagnostics(LABELS, TRUE, unlabelled, previous=PREVIOUS, w=W)
    assert d == pytest.approx({"pseudo_accuracy": 0.5, "changed": 0.5, "ids_present": 3.0,
                               "mean_w_right": (0.9 + 0.8) / 2, "mean_w_wrong": (0.2 + 0.4) / 2})


def test_weak_diagnostics_optional_parts_and_empty_sets():
    d = weak_diagnostics(torch.tensor(LABELS), torch.tensor(TRUE), torch.tensor([2, 3]))
    assert d["pseudo_accuracy"] == 0.5 and math.isnan(d["changed"])
    assert "mean_w_right" not in d and "mean_w_wrong" not in d
    d = weak_diagnostics(LABELS, TRUE, np.array([], dtype=np.int64), previous=PREVIOUS, w=W)
    assert math.isnan(d["pseudo_accuracy"]) and math.isnan(d["changed"])
    assert math.isnan(d["mean_w_right"]) and d["ids_present"] == 3.0
    all_right = weak_diagnostics(TRUE, TRUE, np.array([0, 1, 2]), w=W)
    assert all_right["pseudo_accuracy"] == 1.0 and math.isnan(all_right["mean_w_wrong"])


def test_weak_diagnostics_refuse_bad_rows():
    with pytest.raises(InputError, match=r"lie in \[0, 6\)"):
        weak_diagnostics(LABELS, TRUE, np.array([1, 6]))
    with pytest.raises(InputError, match="3 entries for 6 samples"):
        weak_diagnostics(LABELS, TRUE, np.array([True, False, True]))
    with pytest.raises(InputError, match="same training images"):
        weak_diagnostics(LABELS, TRUE[:5], np.array([1]))
