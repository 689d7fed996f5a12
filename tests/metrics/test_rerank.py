"""k-reciprocal re-ranking: hand-checked neighbour sets and a loop-by-loop reading of the paper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tskd.metrics.rerank import (
    encode,
    expanded_sets,
    jaccard,
    k_reciprocal_rerank,
    neighbours,
    reciprocal,
)


def sq_dist(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    return torch.tensor(((a[:, None] - b[None]) ** 2).sum(-1), dtype=torch.float64)


def test_reciprocal_neighbours_on_a_line():
    # Points 0, 1, 3, 7 with k = 1: N(0)={0,1}, N(1)={1,0}, N(3)={3,1}, N(7)={7,3}.
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    nb = neighbours(sq_dist(x, x), 1)
    assert nb.tolist() == [[0, 1], [1, 0], [2, 1], [3, 2]]
    r = reciprocal(nb)
    expected = np.zeros((4, 4), dtype=bool)
    expected[[0, 0, 1, 1, 2, 3], [0, 1, 0, 1, 2, 3]] = True  # 3 and 7 have only themselves
    np.testing.assert_array_equal(r.numpy(), expected)


def paper_sets(d: np.ndarray, k1: int) -> np.ndarray:
    """R*(i, k1) by the paper's definitions, one item at a time."""
    n = len(d)

    def nn(i, k):  # i first, then its k nearest others
        others = [j for j in np.argsort(d[i], kind="stable") if j != i]
        return {i, *others[:k]}

    def r(i, k):
        return {j for j in nn(i, k) if i in nn(j, k)}

    out = np.zeros((n, n), dtype=bool)
    for i in range(n):
        star = set(r(i, k1))
        for q in r(i, k1):
            half = r(q, round(k1 / 2))
            if len(r(i, k1) & half) >= 2 / 3 * len(half):
                star |= half
        out[i, sorted(star)] = True
    return out


def paper_rerank(q_g, q_q, g_g, k1, k2, lam):
    """The whole method, densely and literally (small inputs only)."""
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    n, nq = len(full), len(q_q)
    v = np.where(paper_sets(full, k1), np.exp(-full), 0.0)
    if k2 > 0:
        order = [[i, *[j for j in np.argsort(full[i], kind="stable") if j != i][:k2]]
                 for i in range(n)]
        v = np.stack([v[o].mean(axis=0) for o in order])
    d_j = np.array([[1 - np.minimum(v[p], v[g]).sum() / np.maximum(v[p], v[g]).sum()
                     for g in range(nq, n)] for p in range(nq)])
    return (1 - lam) * d_j + lam * q_g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expanded_sets_follow_the_paper(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 3))
    d = sq_dist(x, x)
    np.testing.assert_array_equal(expanded_sets(d, 6).numpy(), paper_sets(d.numpy(), 6))


@pytest.mark.parametrize("k1,k2", [(6, 3), (8, 0), (20, 6)])
def test_rerank_matches_a_literal_implementation(k1, k2):
    rng = np.random.default_rng(k1 + k2)
    centres = rng.standard_normal((5, 4)) * 2
    q = centres[rng.integers(0, 5, 12)] + rng.standard_normal((12, 4))
    g = centres[rng.integers(0, 5, 30)] + rng.standard_normal((30, 4))
    args = (sq_dist(q, g), sq_dist(q, q), sq_dist(g, g))
    out = k_reciprocal_rerank(*args, k1=k1, k2=k2, lambda_value=0.3)
    ref = paper_rerank(*(a.numpy() for a in args), k1, k2, 0.3)
    assert out.shape == (12, 30)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)


def test_reranking_demotes_a_non_reciprocal_nearest_neighbour():
    # The query (id 0) is nearest to a tight cluster of id 1 whose members are each other's
    # neighbours, not the query's; the id-0 chain reaches it reciprocally.
    a = np.array([[1.2, 0], [0.9, 0.1], [0.6, 0], [0.3, 0.1], [0, 0]])  # id 0
    b = np.array([[2.5, 0.1], [2.6, -0.1], [2.7, 0.0], [2.55, 0.05]])  # id 1
    g, q = np.vstack([a, b]), np.array([[1.9, 0.0]])
    q_g = sq_dist(q, g)
    assert int(q_g.argmin()) == 5  # originally an id-1 image ranks first
    out = k_reciprocal_rerank(q_g, sq_dist(q, q), sq_dist(g, g), k1=3, k2=0)
    assert int(out.argmin()) == 0  # re-ranked: the id-0 image it is reciprocal with


def test_lambda_one_returns_the_original_distance_and_jaccard_bounds():
    rng = np.random.default_rng(5)
    q, g = rng.standard_normal((6, 3)), rng.standard_normal((9, 3))
    q_g = sq_dist(q, g)
    out = k_reciprocal_rerank(q_g, sq_dist(q, q), sq_dist(g, g), lambda_value=1.0)
    torch.testing.assert_close(out, q_g, rtol=0, atol=0)
    v = torch.tensor([[0.5, 0.0, 0.2], [0.5, 0.0, 0.2], [0.0, 0.7, 0.0]], dtype=torch.float64)
    d_j = jaccard(v[:1], v)
    assert d_j[0, 0] == 0.0 and d_j[0, 1] == 0.0 and d_j[0, 2] == 1.0  # same / disjoint rows
    sets = torch.eye(3, dtype=torch.bool)
    assert encode(torch.zeros(3, 3, dtype=torch.float64), sets, 0)[0, 0] == math.exp(0)
