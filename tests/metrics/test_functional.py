"""CMC / mAP / mINP of the standard protocol: hand-computed toys, ties, inputs, chunking, errors.

The per-query loop of benchmarks/metrics.py (a straightforward, independent implementation) is
the reference for the random cases.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from tskd.core.errors import InputError
from tskd.metrics import evaluate_regdb, evaluate_sysu

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "metrics.py"
_spec = importlib.util.spec_from_file_location("tskd_bench_metrics", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def ranked(n: int) -> np.ndarray:
    """One query row whose gallery is already in rank order (distance = column index)."""
    return np.arange(n, dtype=np.float64)[None, :]


def cmc_of(ranks_hit: int, length: int = 20) -> np.ndarray:
    return (np.arange(1, length + 1) >= ranks_hit).astype(np.float64)


def test_identity_level_and_image_level_cmc_differ():
    # Ranked gallery ids 2, 2, 3, 1, 1 for a query of id 1 (cam 6: nothing removed).
    g_pids = [2, 2, 3, 1, 1]
    sysu = evaluate_sysu(ranked(5), [1], g_pids, [6], [1, 4, 5, 1, 4])
    regdb = evaluate_regdb(ranked(5), [1], g_pids)
    np.testing.assert_array_equal(sysu["cmc"], cmc_of(3))  # distinct ids 2, 3, 1
    np.testing.assert_array_equal(regdb["cmc"], cmc_of(4))  # first correct image at 4
    for out in (sysu, regdb):  # AP and INP are image-level in both protocols
        assert out["mAP"] == pytest.approx((1 / 4 + 2 / 5) / 2, abs=1e-15)
        assert out["mINP"] == pytest.approx(2 / 5, abs=1e-15)


def test_cam3_query_drops_every_cam2_item():
    # Ranked: (id 2, cam 2), (id 1, cam 1), (id 1, cam 2), (id 3, cam 4).
    g_pids, g_cams = [2, 1, 1, 3], [2, 1, 2, 4]
    cam3 = evaluate_sysu(ranked(4), [1], g_pids, [3], g_cams)
    # Kept list (1, cam1), (3, cam4): the cam2 item of another identity is gone too.
    np.testing.assert_array_equal(cam3["cmc"], cmc_of(1))
    assert (cam3["mAP"], cam3["mINP"]) == (1.0, 1.0)
    cam6 = evaluate_sysu(ranked(4), [1], g_pids, [6], g_cams)
    np.testing.assert_array_equal(cam6["cmc"], cmc_of(2))
    assert cam6["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-15)
    assert cam6["mINP"] == pytest.approx(2 / 3, abs=1e-15)
    both = evaluate_sysu(np.vstack([ranked(4), ranked(4)]), [1, 1], g_pids, [3, 6], g_cams)
    np.testing.assert_array_equal(both["cmc"], (cmc_of(1) + cmc_of(2)) / 2)
    assert both["mAP"] == pytest.approx((1 + 7 / 12) / 2, abs=1e-15)


def test_minp_and_ap_with_three_correct_items():
    g_pids = [1, 5, 1, 6, 7, 1, 8]  # correct at positions 1, 3, 6
    out = evaluate_regdb(ranked(7), [1], g_pids)
    assert out["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 6) / 3, abs=1e-15)
    assert out["mINP"] == pytest.approx(3 / 6, abs=1e-15)
    np.testing.assert_array_equal(out["cmc"], cmc_of(1))


def test_queries_without_a_match_are_left_out_of_every_average():
    g_pids, g_cams = [1, 2, 3, 4], [1, 1, 2, 4]
    dist = np.vstack([ranked(4)] * 3)
    # Query 0 matches at rank 1; query 1 (id 9) has no match; query 2 (id 3, cam 3) has only a
    # cam2 match, which the camera rule removes.
    out = evaluate_sysu(dist, [1, 9, 3], g_pids, [6, 6, 3], g_cams)
    alone = evaluate_sysu(dist[:1], [1], g_pids, [6], g_cams)
    np.testing.assert_array_equal(out["cmc"], alone["cmc"])
    assert (out["mAP"], out["mINP"]) == (alone["mAP"], alone["mINP"]) == (1.0, 1.0)
    with pytest.raises(InputError, match="none of the 2 queries has a correct match"):
        evaluate_sysu(dist[1:], [9, 3], g_pids, [6, 3], g_cams)


def test_ties_keep_gallery_order():
    # All distances equal: the ranking is the gallery order (a stable sort).
    out = evaluate_sysu(np.full((1, 4), 0.5), [1], [2, 1, 3, 1], [6], [1, 1, 1, 1])
    np.testing.assert_array_equal(out["cmc"], cmc_of(2))
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2, abs=1e-15)
    assert out["mINP"] == pytest.approx(2 / 4, abs=1e-15)
    swapped = evaluate_sysu(np.full((1, 4), 0.5), [1], [1, 2, 3, 1], [6], [1, 1, 1, 1])
    assert swapped["mAP"] == pytest.approx((1 + 2 / 4) / 2, abs=1e-15)
    # Partial ties: id 6 (column 1) ties with the correct column 2 and ranks first; id 7
    # (column 3) ties too but ranks after it.
    dist = np.array([[0.1, 0.2, 0.2, 0.2, 0.3]])
    out = evaluate_sysu(dist, [1], [5, 6, 1, 7, 1], [6], [1] * 5)
    np.testing.assert_array_equal(out["cmc"], cmc_of(3))  # distinct 5, 6, 1
    assert out["mAP"] == pytest.approx((1 / 3 + 2 / 5) / 2, abs=1e-15)
    assert out["mINP"] == pytest.approx(2 / 5, abs=1e-15)
    # Two tied correct items with a tied wrong one between them (by column).
    out = evaluate_regdb(np.array([[0.3, 0.3, 0.3, 0.1]]), [1], [1, 2, 1, 3])
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2, abs=1e-15)
    np.testing.assert_array_equal(out["cmc"], cmc_of(2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_many_ties_match_the_stable_reference(dtype):
    rng = np.random.default_rng(3)
    dist = rng.integers(0, 6, (60, 50)).astype(dtype)  # heavy ties everywhere
    q_pids, g_pids = rng.integers(0, 8, 60), rng.integers(0, 8, 50)
    q_cams, g_cams = rng.choice([3, 6], 60), rng.choice([1, 2, 4, 5], 50)
    check(evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams),
          bench.reference_sysu(dist, q_pids, g_pids, q_cams, g_cams))
    check(evaluate_regdb(dist, q_pids, g_pids), bench.reference_regdb(dist, q_pids, g_pids))


def check(out: dict, ref: dict, tol: float = 1e-12) -> None:
    assert out["cmc"].shape == ref["cmc"].shape
    np.testing.assert_allclose(out["cmc"], ref["cmc"], rtol=0, atol=tol)
    assert out["mAP"] == pytest.approx(ref["mAP"], abs=tol)
    assert out["mINP"] == pytest.approx(ref["mINP"], abs=tol)


@pytest.mark.parametrize("seed", range(6))
def test_random_inputs_agree_with_the_per_query_loop(seed):
    rng = np.random.default_rng(seed)
    nq, ng, ids = rng.integers(20, 300), rng.integers(25, 400), rng.integers(3, 60)
    dtype = np.float32 if seed % 2 else np.float64
    dist = rng.standard_normal((nq, ng)).astype(dtype)
    q_pids, g_pids = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    q_cams, g_cams = rng.choice([3, 6], nq), rng.choice([1, 2, 4, 5], ng)
    max_rank = int(rng.choice([1, 5, 20, 50]))
    check(evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank),
          bench.reference_sysu(dist, q_pids, g_pids, q_cams, g_cams, max_rank))
    check(evaluate_regdb(dist, q_pids, g_pids, max_rank=max_rank),
          bench.reference_regdb(dist, q_pids, g_pids, max_rank))


def test_numpy_and_torch_inputs_give_identical_numbers():
    dist, q_pids, g_pids, q_cams, g_cams = bench.make_case(300, 120, 20, seed=1)
    ref = evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams)
    as_t = [torch.from_numpy(a) for a in (dist, q_pids, g_pids, q_cams, g_cams)]
    for out in (evaluate_sysu(*as_t),  # all tensors
                evaluate_sysu(as_t[0].double(), *as_t[1:]),  # float64 of the same values
                evaluate_sysu(as_t[0], q_pids.tolist(), g_pids, q_cams, g_cams)):  # mixed
        np.testing.assert_array_equal(out["cmc"], ref["cmc"])
        assert (out["mAP"], out["mINP"]) == (ref["mAP"], ref["mINP"])
    reg = evaluate_regdb(dist, q_pids, g_pids)
    reg_t = evaluate_regdb(*as_t[:3])
    np.testing.assert_array_equal(reg_t["cmc"], reg["cmc"])
    assert (reg_t["mAP"], reg_t["mINP"]) == (reg["mAP"], reg["mINP"])


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_equals_unchunked_exactly(chunk):
    dist, q_pids, g_pids, q_cams, g_cams = bench.make_case(200, 150, 15, seed=2)
    whole = evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=10**6)
    part = evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=chunk)
    np.testing.assert_array_equal(part["cmc"], whole["cmc"])
    assert (part["mAP"], part["mINP"]) == (whole["mAP"], whole["mINP"])
    whole = evaluate_regdb(dist, q_pids, g_pids, chunk_size=10**6)
    part = evaluate_regdb(dist, q_pids, g_pids, chunk_size=chunk)
    assert (part["mAP"], part["mINP"]) == (whole["mAP"], whole["mINP"])


def test_cmc_stays_at_its_last_value_beyond_the_gallery():
    out = evaluate_regdb(ranked(3), [1], [2, 1, 3], max_rank=5)
    np.testing.assert_array_equal(out["cmc"], [0, 1, 1, 1, 1])
    assert out["cmc"].dtype == np.float64


def test_bad_inputs_raise_with_the_value_named():
    with pytest.raises(InputError, match=r"q_pids has 2 entries but dist is 1 x 3"):
        evaluate_regdb(ranked(3), [1, 2], [1, 2, 3])
    with pytest.raises(InputError, match=r"g_cams has 2 entries"):
        evaluate_sysu(ranked(3), [1], [1, 2, 3], [3], [1, 2])
    with pytest.raises(InputError, match=r"must be \(num_query, num_gallery\)"):
        evaluate_regdb(np.zeros(3), [1], [1, 2, 3])
    bad = ranked(3)
    bad[0, 1] = np.nan
    with pytest.raises(InputError, match=r"dist\[0, 1\] = nan: distances must be finite"):
        evaluate_regdb(bad, [1], [1, 2, 3])
    with pytest.raises(InputError, match="max_rank=0"):
        evaluate_regdb(ranked(3), [1], [1, 2, 3], max_rank=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_give_the_cpu_numbers():
    dist, q_pids, g_pids, q_cams, g_cams = bench.make_case(500, 200, 30, seed=4)
    ref = evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams)
    gpu = [torch.from_numpy(a).cuda() for a in (dist, q_pids, g_pids, q_cams, g_cams)]
    out = evaluate_sysu(*gpu)
    np.testing.assert_array_equal(out["cmc"], ref["cmc"])
    assert (out["mAP"], out["mINP"]) == (ref["mAP"], ref["mINP"])
