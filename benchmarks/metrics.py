"""Benchmark: vectorised tskd.metrics against a straightforward per-query loop, same inputs.

Cases (random features with identity structure, cosine distance):
    sysu      3803 queries (cams 3/6, 96 ids) x 301 gallery (cams 1/2/4/5): one all-search trial
    sysu-10x  the same queries x a 10x gallery (3010 images)
    large     20000 x 20000 (only with ``--large``): checks memory stays bounded

Run: ``python benchmarks/metrics.py [--large] [--repeats 3]``. Results of both implementations
are asserted equal (CMC exactly, mAP/mINP to 1e-12) before times and speed-ups are printed.
The loop functions here also serve the unit tests as an independent reference.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from tskd.metrics import evaluate_regdb, evaluate_sysu


def _loop(dist, q_pids, g_pids, q_cams, g_cams, max_rank: int, identity_level: bool) -> dict:
    """One query at a time, the way the standard code reads (stable sort for ties)."""
    dist = np.asarray(dist)
    cmc_sum = np.zeros(max_rank)
    ap_sum = inp_sum = 0.0
    num_valid = 0
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        if q_cams is not None and q_cams[i] == 3:
            order = order[g_cams[order] != 2]  # the kept list
        ranked = g_pids[order]
        match = ranked == q_pids[i]
        if not match.any():
            continue  # no correct item: the query is left out of every average
        num_valid += 1
        if identity_level:
            _, first = np.unique(ranked, return_index=True)
            distinct = ranked[np.sort(first)]  # identities in order of first appearance
            hit = int(np.flatnonzero(distinct == q_pids[i])[0])
        else:
            hit = int(np.flatnonzero(match)[0])
        if hit < max_rank:
            cmc_sum[hit:] += 1
        positions = np.flatnonzero(match) + 1.0  # 1-based positions of the correct items
        ap_sum += np.mean(np.arange(1, len(positions) + 1) / positions)
        inp_sum += len(positions) / positions[-1]
    return {"cmc": cmc_sum / num_valid, "mAP": ap_sum / num_valid, "mINP": inp_sum / num_valid}


def reference_sysu(dist, q_pids, g_pids, q_cams, g_cams, max_rank: int = 20) -> dict:
    """Per-query loop: SYSU camera rule, identity-level CMC."""
    return _loop(dist, np.asarray(q_pids), np.asarray(g_pids), np.asarray(q_cams),
                 np.asarray(g_cams), max_rank, True)


def reference_regdb(dist, q_pids, g_pids, max_rank: int = 20) -> dict:
    """Per-query loop: no camera rule, image-level CMC."""
    return _loop(dist, np.asarray(q_pids), np.asarray(g_pids), None, None, max_rank, False)


def make_case(num_q: int, num_g: int, num_ids: int, seed: int = 0, dim: int = 64) -> tuple:
    """Random SYSU-shaped data: (dist float32 (Q, G), q_pids, g_pids, q_cams, g_cams)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim)).astype(np.float32)
    q_pids = rng.integers(0, num_ids, num_q)
    g_pids = np.concatenate([np.arange(num_ids), rng.integers(0, num_ids, num_g - num_ids)])
    q_cams = rng.choice([3, 6], num_q)
    g_cams = rng.choice([1, 2, 4, 5], num_g)

    def feats(pids):
        f = centres[pids] + 1.5 * rng.standard_normal((len(pids), dim)).astype(np.float32)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    dist = -(feats(q_pids) @ feats(g_pids).T)  # cosine: rank by -similarity
    return dist, q_pids, g_pids, q_cams, g_cams


def _best_time(fn, repeats: int) -> tuple[float, dict]:
    """Best wall time of ``repeats`` calls after an untimed warm-up (allocator, caches).

    ``repeats=0`` times the single warm-up call itself.
    """
    times, out = [], None
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return (min(times[1:]) if repeats else times[0]), out


def _check(a: dict, b: dict, name: str) -> None:
    assert np.array_equal(a["cmc"], b["cmc"]), f"{name}: CMC differs {a['cmc']} vs {b['cmc']}"
    for key in ("mAP", "mINP"):
        assert abs(a[key] - b[key]) <= 1e-12, f"{name}: {key} {a[key]} vs {b[key]}"


def run_case(name: str, num_q: int, num_g: int, num_ids: int, repeats: int) -> None:
    dist, q_pids, g_pids, q_cams, g_cams = make_case(num_q, num_g, num_ids)
    for metric, fast, ref, args in (
        ("sysu", evaluate_sysu, reference_sysu, (q_pids, g_pids, q_cams, g_cams)),
        ("regdb", evaluate_regdb, reference_regdb, (q_pids, g_pids)),
    ):
        t_fast, out = _best_time(lambda: fast(dist, *args), repeats)  # noqa: B023
        ref_repeats = 0 if num_q > 5000 else repeats  # the large loop runs once (warm-up only)
        t_ref, expected = _best_time(lambda: ref(dist, *args), ref_repeats)  # noqa: B023
        _check(out, expected, f"{name}/{metric}")
        print(f"{name:9s} {metric:5s} {num_q:6d} x {num_g:6d}  vectorised {t_fast * 1e3:9.1f} ms"
              f"  loop {t_ref * 1e3:10.1f} ms  speed-up {t_ref / t_fast:6.1f}x"
              f"  (R1 {out['cmc'][0]:.4f} mAP {out['mAP']:.4f} mINP {out['mINP']:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add the 20000 x 20000 case")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (best is kept)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    run_case("sysu", 3803, 301, 96, args.repeats)
    run_case("sysu-10x", 3803, 3010, 96, args.repeats)
    if args.large:
        run_case("large", 20000, 20000, 2000, 1)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
