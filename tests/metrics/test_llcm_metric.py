"""evaluate_llcm against a per-query loop written here, plus hand-computed camera-rule cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tskd.core.errors import InputError
from tskd.metrics import evaluate_llcm, evaluate_sysu


def loop_llcm(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20) -> dict:
    """One query at a time: stable sort, drop same id + same camera, then walk the list."""
    dist = np.asarray(dist, dtype=np.float64)
    g_pids, g_cams = np.asarray(g_pids), np.asarray(g_cams)
    cmc, aps, inps = np.zeros(max_rank), [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        ranked = g_pids[order][keep]
        correct = np.flatnonzero(ranked == q_pids[i])
        if len(correct) == 0:
            continue
        distinct = []
        for pid in ranked:  # identities in order of first appearance
            if pid not in distinct:
                distinct.append(pid)
        hit = distinct.index(q_pids[i])
        cmc[hit:] += 1
        aps.append(sum((k + 1) / (p + 1) for k, p in enumerate(correct)) / len(correct))
        inps.append(len(correct) / (correct[-1] + 1))
    n = len(aps)
    return {"cmc": cmc / n, "mAP": sum(aps) / n, "mINP": sum(inps) / n}


def ranked(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)[None, :]


def test_same_identity_same_camera_is_removed_other_identities_are_not():
    # Ranked gallery: (id 1, cam 2), (id 5, cam 2), (id 1, cam 4), (id 1, cam 2).
    g_pids, g_cams = [1, 5, 1, 1], [2, 2, 4, 2]
    out = evaluate_llcm(ranked(4), [1], g_pids, [2], g_cams)
    # Kept: (5, cam 2) at 1, (1, cam 4) at 2: another identity in the query's camera stays.
    np.testing.assert_array_equal(out["cmc"], [0.0] + [1.0] * 19)
    assert out["mAP"] == 0.5 and out["mINP"] == 0.5
    # A query from camera 7 keeps everything: correct at 1, 3, 4.
    other = evaluate_llcm(ranked(4), [1], g_pids, [7], g_cams)
    np.testing.assert_array_equal(other["cmc"], np.ones(20))
    assert other["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3, abs=1e-15)
    assert other["mINP"] == 0.75
    # SYSU's rule is different: a cam3 query drops cam2 items of every identity.
    sysu = evaluate_sysu(ranked(4), [1], g_pids, [3], g_cams)
    assert sysu["mAP"] == 1.0


def test_query_whose_every_match_is_removed_is_left_out():
    g_pids, g_cams = [1, 2, 2, 3], [5, 5, 1, 1]
    dist = np.vstack([ranked(4)] * 2)
    # Query 0 (id 1, cam 5): its only match is in cam 5 -> no match. Query 1 (id 2, cam 5):
    # the cam-5 image of id 2 goes, the cam-1 one is at kept position 2 (after id 1).
    out = evaluate_llcm(dist, [1, 2], g_pids, [5, 5], g_cams, max_rank=3)
    np.testing.assert_array_equal(out["cmc"], [0.0, 1.0, 1.0])
    assert out["mAP"] == 0.5 and out["mINP"] == 0.5
    with pytest.raises(InputError, match="none of the 1 queries has a correct match"):
        evaluate_llcm(dist[:1], [1], g_pids, [5], g_cams)


@pytest.mark.parametrize("seed", range(8))
def test_random_cases_agree_with_the_loop(seed):
    rng = np.random.default_rng(seed)
    nq, ng, ids = rng.integers(1, 200), rng.integers(1, 250), rng.integers(1, 25)
    if seed % 3 == 0:  # heavy ties: the stable order must decide
        dist = rng.integers(0, 4, (nq, ng)).astype(np.float32)
    else:
        dist = rng.standard_normal((nq, ng)).astype(np.float32 if seed % 2 else np.float64)
    q_pids, g_pids = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    q_cams = rng.choice([1, 2, 4, 5, 6, 7, 8, 9], nq)
    g_cams = rng.integers(1, 10, ng)
    max_rank = int(rng.choice([1, 5, 20]))
    try:
        ref = loop_llcm(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    except ZeroDivisionError:  # no query has a match: both must refuse
        with pytest.raises(InputError, match="has a correct match"):
            evaluate_llcm(dist, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
        return
    for chunk in (None, 1, 13):
        out = evaluate_llcm(dist, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank,
                            chunk_size=chunk)
        np.testing.assert_allclose(out["cmc"], ref["cmc"], rtol=0, atol=1e-12)
        assert out["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)
        assert out["mINP"] == pytest.approx(ref["mINP"], abs=1e-12)


def test_the_rule_changes_results_on_realistic_cases():
    # Many same-camera matches: the rule must matter, and the loop must agree.
    rng = np.random.default_rng(11)
    nq, ng = 150, 120
    q_pids, g_pids = rng.integers(0, 10, nq), rng.integers(0, 10, ng)
    q_cams, g_cams = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    dist = rng.standard_normal((nq, ng)) - 1.5 * (q_pids[:, None] == g_pids[None, :])
    out = evaluate_llcm(dist, q_pids, g_pids, q_cams, g_cams)
    ref = loop_llcm(dist, q_pids, g_pids, q_cams, g_cams)
    assert out["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)
    np.testing.assert_allclose(out["cmc"], ref["cmc"], rtol=0, atol=1e-12)
    nothing_removed = loop_llcm(dist, q_pids, g_pids, q_cams, np.zeros(ng, dtype=int))
    assert abs(out["mAP"] - nothing_removed["mAP"]) > 1e-3


def test_torch_inputs_and_bad_shapes():
    rng = np.random.default_rng(2)
    dist = rng.standard_normal((30, 40)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 5, 30), rng.integers(0, 5, 40)
    q_cams, g_cams = rng.integers(1, 10, 30), rng.integers(1, 10, 40)
    ref = evaluate_llcm(dist, q_pids, g_pids, q_cams, g_cams)
    out = evaluate_llcm(*(torch.from_numpy(a) for a in (dist, q_pids, g_pids, q_cams, g_cams)))
    np.testing.assert_array_equal(out["cmc"], ref["cmc"])
    assert (out["mAP"], out["mINP"]) == (ref["mAP"], ref["mINP"])
    with pytest.raises(InputError, match="q_cams has 29 entries"):
        evaluate_llcm(dist, q_pids, g_pids, q_cams[:29], g_cams)
