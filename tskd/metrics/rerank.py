"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), written from the paper. An off-by-default test-time option.

Over the set of all queries and gallery items (N = Q + G), with the original distance d:

1. ``N(i, k)``: the k nearest items of i. Convention here: i itself (distance 0) plus its k
   nearest other items, so ``|N(i, k)| = k + 1`` (``torch.topk``; exact ties in d, rare with
   real features, are broken as topk breaks them).
2. ``R(i, k) = {j in N(i, k) : i in N(j, k)}`` (k-reciprocal neighbours).
3. ``R*(i, k) = R(i, k) united with R(q, k/2)`` for every ``q in R(i, k)`` whose half set
   overlaps enough: ``|R(i, k) & R(q, k/2)| >= 2/3 |R(q, k/2)|``.
4. ``V[i, j] = exp(-d(i, j))`` for ``j in R*(i, k)``, else 0 (the Gaussian kernel of the paper,
   no normalisation); local query expansion replaces ``V[i]`` by the mean of ``V[j]`` over
   ``j in N(i, k2)``.
5. Jaccard distance ``d_J(p, g) = 1 - sum_j min(V[p, j], V[g, j]) / sum_j max(V[p, j], V[g, j])``
   and the final distance ``(1 - lambda) * d_J + lambda * d``.

Defaults k1 = 20, k2 = 6, lambda = 0.3 (the paper's). V is sparse (tens to a few hundred
non-zeros per row), so the expansion and the Jaccard sums work on its non-zero entries: the
``min`` sums visit only pairs of non-zeros that share a column (an inverted index), never the
dense Q x G x N triples. Sums use ``index_add_``: deterministic on CPU, atomic (last-bit
nondeterministic) on GPU.
"""

from __future__ import annotations

import torch

# (query non-zero, gallery non-zero) pairs handled at once in the Jaccard sums: bounds memory.
_JACCARD_ELEMENTS = 2**24


def neighbours(dist: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k + 1) indices of ``N(i, k)``: i first, then its k nearest others by distance."""
    n = dist.shape[0]
    d = dist.clone()
    d.fill_diagonal_(float("-inf"))  # i ranks first even when another item is at distance 0
    return torch.topk(d, min(k + 1, n), dim=1, largest=False, sorted=True).indices


def reciprocal(nb: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: ``R[i, j]`` = j in N(i, k) and i in N(j, k), from the neighbour lists."""
    n = nb.shape[0]
    member = torch.zeros(n, n, dtype=torch.bool, device=nb.device)
    member.scatter_(1, nb, True)
    return member & member.T


def expanded_sets(dist: torch.Tensor, k1: int) -> torch.Tensor:
    """(N, N) bool membership of ``R*(i, k1)`` (steps 1-3 of the module docstring)."""
    nb = neighbours(dist, k1)  # (N, k1 + 1)
    r = reciprocal(nb)
    half_nb = neighbours(dist, round(k1 / 2))  # (N, kh + 1)
    half_valid = reciprocal(half_nb).gather(1, half_nb)  # (N, kh + 1): which entries are in R
    half_size = half_valid.sum(dim=1)  # (N,) |R(q, k/2)|
    # Candidates q in R(i, k1) and the overlap |R(i, k1) & R(q, k1/2)| of each.
    cand_valid = r.gather(1, nb)  # (N, k1 + 1)
    q_half = half_nb[nb]  # (N, k1 + 1, kh + 1) the half lists of every candidate
    q_half_valid = half_valid[nb]
    rows = torch.arange(nb.shape[0], device=nb.device)[:, None, None]
    in_r = r[rows, q_half] & q_half_valid  # (N, k1 + 1, kh + 1)
    overlap = in_r.sum(dim=2)
    accept = cand_valid & (3 * overlap >= 2 * half_size[nb])  # integer form of >= 2/3
    out = r.clone()
    add = accept[:, :, None] & q_half_valid  # (N, k1 + 1, kh + 1)
    out[rows.expand_as(q_half)[add], q_half[add]] = True
    return out


def _entries(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, values) of the non-zeros of a dense matrix, in row-major order."""
    rows, cols = v.nonzero(as_tuple=True)
    return rows, cols, v[rows, cols]


def encode(dist: torch.Tensor, sets: torch.Tensor, k2: int) -> torch.Tensor:
    """(N, N) k-reciprocal feature V after local query expansion over ``N(i, k2)``."""
    v = torch.where(sets, torch.exp(-dist), torch.zeros((), dtype=dist.dtype, device=dist.device))
    if k2 <= 0:
        return v
    n = v.shape[0]
    nb = neighbours(dist, k2)  # (N, k2 + 1)
    rows, cols, vals = _entries(v)  # V is sparse: |R*(i)| entries in row i
    counts = torch.bincount(rows, minlength=n)
    first = torch.cumsum(counts, 0) - counts  # where each row's entries start
    # Row i of the result sums the entries of rows nb[i]: list them all, then add them up.
    src = nb.reshape(-1)  # (N * (k2 + 1),) source row of each (i, neighbour) pair
    dest = torch.arange(n, device=v.device).repeat_interleave(nb.shape[1])
    take = counts[src]
    pair = torch.repeat_interleave(torch.arange(len(src), device=v.device), take)
    within = torch.arange(len(pair), device=v.device) - (torch.cumsum(take, 0) - take)[pair]
    entry = first[src[pair]] + within
    out = torch.zeros(n * n, dtype=v.dtype, device=v.device)
    out.index_add_(0, dest[pair] * n + cols[entry], vals[entry] / nb.shape[1])
    return out.view(n, n)


def jaccard(vq: torch.Tensor, vg: torch.Tensor) -> torch.Tensor:
    """(Q, G) Jaccard distance between the rows of ``vq`` (Q, N) and ``vg`` (G, N); V >= 0.

    ``sum_j min`` is non-zero only where both rows are, so it is accumulated over the pairs of
    non-zeros sharing a column (an inverted index), not over all Q * G * N triples.
    """
    nq, ng, n = vq.shape[0], vg.shape[0], vq.shape[1]
    dev = vq.device
    q_rows, q_cols, q_vals = _entries(vq)
    g_cols, g_rows, g_vals = _entries(vg.T.contiguous())  # gallery non-zeros by column
    counts = torch.bincount(g_cols, minlength=n)  # gallery non-zeros per column
    first = torch.cumsum(counts, 0) - counts
    take = counts[q_cols]  # gallery partners of each query non-zero
    ends = torch.cumsum(take, 0)
    mins = torch.zeros(nq * ng, dtype=vq.dtype, device=dev)
    # Chunks of query non-zeros with about _JACCARD_ELEMENTS pairs each bound the memory.
    total = int(ends[-1]) if len(ends) else 0
    cuts = torch.searchsorted(ends, torch.arange(0, total, _JACCARD_ELEMENTS, device=dev))
    edges = sorted({0, *cuts.tolist(), len(q_cols)})
    for a, b in zip(edges[:-1], edges[1:]):
        t = take[a:b]
        pair = a + torch.repeat_interleave(torch.arange(b - a, device=dev), t)  # (P,) entry
        within = torch.arange(len(pair), device=dev) - (torch.cumsum(t, 0) - t)[pair - a]
        partner = first[q_cols[pair]] + within  # the gallery entry it meets
        mins.index_add_(0, q_rows[pair] * ng + g_rows[partner],
                        torch.minimum(q_vals[pair], g_vals[partner]))
    mins = mins.view(nq, ng)
    maxs = vq.sum(dim=1)[:, None] + vg.sum(dim=1)[None, :] - mins  # sum max = a + b - sum min
    return 1 - mins / maxs.clamp(min=torch.finfo(vq.dtype).tiny)


def k_reciprocal_rerank(q_g: torch.Tensor, q_q: torch.Tensor, g_g: torch.Tensor, k1: int = 20,
                        k2: int = 6, lambda_value: float = 0.3) -> torch.Tensor:
    """Re-ranked (Q, G) distances.

    Args:
        q_g: (Q, G) original query-gallery distances (non-negative, e.g. 1 - cosine).
        q_q: (Q, Q) query-query distances.
        g_g: (G, G) gallery-gallery distances.
        k1: Size of the k-reciprocal neighbourhood.
        k2: Size of the local query expansion (0 disables it).
        lambda_value: Weight of the original distance in the result.

    Returns:
        (Q, G) float tensor on the inputs' device: ``(1 - lambda) * d_J + lambda * q_g``.
    """
    nq = q_g.shape[0]
    full = torch.cat([torch.cat([q_q, q_g], dim=1), torch.cat([q_g.T, g_g], dim=1)], dim=0)
    v = encode(full, expanded_sets(full, k1), k2)  # (N, N)
    d_j = jaccard(v[:nq], v[nq:])
    return (1 - lambda_value) * d_j + lambda_value * q_g
