"""Retrieval metrics of the standard VI-ReID protocol: CMC, mAP and mINP, vectorised over queries.

Definitions (docs/protocol.md), for each query:

- the gallery is ranked by ascending distance with a **stable** sort: tied distances keep
  gallery (column) order, so the ranking, and every number, is a pure function of the input;
- camera rules: on SYSU-MM01 a query from camera 3 ignores every gallery item from camera 2
  (same room); on LLCM a query ignores the gallery items of its own identity from its own
  camera number; the remaining items form the *kept* list, and positions below are 1-based
  positions in it (RegDB removes nothing);
- CMC: SYSU and LLCM are identity-level (walk the kept list keeping the first item of each
  identity; rank-k hit when the query id is among the first k distinct ids), RegDB is
  image-level (rank-k hit when a correct image is among the first k kept items);
- AP = mean over the correct items of (#correct up to it) / (its position);
- INP = (#correct) / (position of the last correct item);
- a query with no correct item in its kept list is left out of every average, CMC included.

How: no row is sorted. The camera rule is a removal mask per chunk of queries (SYSU: cam3 rows x
cam2 columns; LLCM: same identity and camera), and removed items get distance +inf in the query's
row copy: no finite threshold counts them and they stop being correct items, so every protocol
shares one ranking core (SYSU's numbers are those of the former two-gallery search, bit for
bit). Every number above depends only on the positions of the query's few correct items, and
the position of correct item ``c`` is the number of kept items ranked up to it,
``#{i: (d_i, i) <= (d_c, c)}``: one comparison pass over the row per correct item (a cheap
equality count flags the rare rows with exact ties, which are redone with the column
tie-break). Rows are grouped by their number of correct items, so the passes touch
``sum_q m_q * G`` elements, and queries are processed in chunks that bound the working memory
(a 20k x 20k distance matrix is read a slice at a time, never copied whole). The arithmetic
runs in numpy on the CPU, single-threaded and fast for these passes; torch tensors (CPU or GPU)
are read chunk by chunk. Sums accumulate in float64 in a fixed order, so the chunk size cannot
change any result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tskd.core.errors import InputError

# Distance elements per chunk of queries (4 MB as float32): each slot's pass re-reads the chunk,
# so a chunk that stays in the CPU cache is faster than a larger one.
CHUNK_ELEMENTS = 2**20


def _ids(x, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {arr.shape}; pass one id per row")
    return arr.astype(np.int64, copy=False)


def _block(dist, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``dist`` as a numpy float array (a view where possible)."""
    block = dist[start:stop]
    if isinstance(block, torch.Tensor):
        if block.dtype in (torch.float16, torch.bfloat16):
            block = block.float()  # exact: same order and ties
        block = block.detach().cpu().numpy()
    if block.dtype.kind != "f" or block.dtype.itemsize < 4:
        block = block.astype(np.float64 if block.dtype.kind in "iub" else np.float32)
    if not np.isfinite(block).all():
        row, col = np.argwhere(~np.isfinite(block))[0]
        raise InputError(f"dist[{start + row}, {col}] = {block[row, col]}: distances must be "
                           "finite; check the features for NaN/inf embeddings")
    return block


@dataclass
class _Gallery:
    """Gallery columns grouped by identity, so each query's same-identity items are one slice."""

    ids: np.ndarray  # (U,) sorted distinct identities
    labels: np.ndarray  # (G,) index into ids of every gallery item
    perm: np.ndarray  # (G,) items grouped by identity, ascending within a group
    starts: np.ndarray  # (U,) first position of each identity in perm
    counts: np.ndarray  # (U,) items per identity

    @classmethod
    def build(cls, g_pids: np.ndarray) -> _Gallery:
        ids, labels, counts = np.unique(g_pids, return_inverse=True, return_counts=True)
        return cls(ids, labels, np.argsort(labels, kind="stable"), np.cumsum(counts) - counts,
                   counts)


def _up_to(d: np.ndarray, thr: np.ndarray, col: np.ndarray | None) -> np.ndarray:
    """(k, G) bool: items ranked up to the threshold item (value ``thr``, column ``col``).

    ``col=None`` assumes no other item has exactly the threshold value; otherwise equal values
    are ordered by gallery column, as a stable sort orders them.
    """
    if col is None:
        return d <= thr
    return (d < thr) | ((d == thr) & (np.arange(d.shape[1]) <= col))


def _positions(d: np.ndarray, dc: np.ndarray, cols: np.ndarray, m: np.ndarray,
               exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """Kept positions (B, M) of each row's correct items, and the rows that have ties.

    Rows come ordered by decreasing ``m`` (correct items per row), so slot t concerns a prefix
    of the rows only. With ``exact=False`` a position is #{d <= d_c}, right unless another item
    has exactly the distance d_c; the rows where that happens are returned to be redone with
    ``exact=True``, which orders equal distances by gallery column as a stable sort does.
    """
    b, g = d.shape
    count = np.uint16 if g < 2**16 else np.int64  # narrow sums are markedly faster in numpy
    slots = np.arange(dc.shape[1])
    active = np.searchsorted(-m, -slots, side="left")  # rows with more than t correct items
    pos = np.zeros(dc.shape, dtype=np.int64)
    tied = (dc[:, 1:] == dc[:, :-1]) & (slots[1:] < m[:, None])  # (B, M-1) equal correct items
    tied = tied.any(axis=1)
    buf = np.empty((b, g), dtype=bool)  # reused: fresh large temporaries cost page faults
    for t in slots[active > 0]:
        k = active[t]
        rows, thr, out = d[:k], dc[:k, t, None], buf[:k]  # (k, G), (k, 1), (k, G)
        if exact:
            out = _up_to(rows, thr, cols[:k, t, None])
        else:
            np.less_equal(rows, thr, out=out)
        pos[:k, t] = out.view(np.uint8).sum(axis=1, dtype=count)
        if not exact:  # the correct item equals itself; anything more is a tie
            np.equal(rows, thr, out=out)
            tied[:k] |= out.view(np.uint8).sum(axis=1, dtype=count) != 1
    return pos, np.flatnonzero(tied) if not exact else np.zeros(0, dtype=np.int64)


def _search(block: np.ndarray, rows: np.ndarray, q_pids: np.ndarray, gal: _Gallery,
            removed: np.ndarray | None, identity_level: bool) -> tuple[np.ndarray, ...]:
    """Per-query (#correct, CMC rank, AP, INP) of ``block[rows]`` against the gallery.

    ``removed`` (len(rows), G) marks the gallery items each query ignores (None: none). They are
    set to +inf in the query's row copy, so no finite threshold ever counts them, and a removed
    item of the query's own identity is no longer a correct item.
    """
    seg = np.minimum(np.searchsorted(gal.ids, q_pids), len(gal.ids) - 1)  # (B,)
    m_all = np.where(gal.ids[seg] == q_pids, gal.counts[seg], 0)  # same-identity items
    g = len(gal.labels)
    slot = np.arange(max(int(m_all.max()), 1))
    cols = gal.perm[np.minimum(gal.starts[seg][:, None] + slot, g - 1)]  # (B, M)
    live = slot < m_all[:, None]  # slots holding a correct item
    if removed is not None:
        live &= ~np.take_along_axis(removed, cols, axis=1)
    m = np.count_nonzero(live, axis=1)  # correct items per query
    by_m = np.argsort(-m, kind="stable")  # more correct items first: slot t uses a prefix
    rows, cols, live, m = rows[by_m], cols[by_m], live[by_m], m[by_m]
    d = np.take(block, rows, axis=0)  # (B, G) copy, C-contiguous (row passes below need it)
    if removed is not None:
        np.putmask(d, removed[by_m], np.inf)
    b = d.shape[0]
    dc = np.where(live, np.take_along_axis(d, cols, axis=1), np.inf)
    order = np.argsort(dc, axis=1, kind="stable")  # cols ascend per row: ties keep column order
    dc, cols = np.take_along_axis(dc, order, 1), np.take_along_axis(cols, order, 1)

    pos, tied = _positions(d, dc, cols, m, exact=False)
    if len(tied):  # redo the rows with ties, breaking them by gallery column
        pos[tied], _ = _positions(d[tied], dc[tied], cols[tied], m[tied], exact=True)

    ap, last = np.zeros(b), np.ones(b)
    for t in range(len(slot)):  # a fixed summation order, independent of the chunking
        k = int(np.count_nonzero(m > t))
        ap[:k] += (t + 1) / pos[:k, t]
        last[:k] = pos[:k, t]
    valid = m > 0
    ap = np.where(valid, ap / np.maximum(m, 1), 0.0)
    inp = np.where(valid, m / last, 0.0)
    rank = pos[:, 0].copy()
    if identity_level:
        # Distinct identities ranked up to the first correct item (1 or 2 items need no count).
        many = np.flatnonzero(valid & (rank > 2))
        if len(many):
            up_to = _up_to(d[many], dc[many, :1], None)
            if len(tied):
                redo = np.flatnonzero(np.isin(many, tied))
                up_to[redo] = _up_to(d[many[redo]], dc[many[redo], :1], cols[many[redo], :1])
            r, c = np.nonzero(up_to)
            u = len(gal.ids)
            seen = np.bincount(r * u + gal.labels[c], minlength=len(many) * u)
            rank[many] = np.count_nonzero(seen.reshape(len(many), u), axis=1)
    return rows, m, rank, ap, inp


# (q_pids, q_cams, g_pids, g_cams) of a chunk of queries -> (B, G) bool of the gallery items
# each query ignores, or None when nothing is removed for any of them.
_Removal = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray | None]


def _sysu_removed(q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray,
                  g_cams: np.ndarray) -> np.ndarray | None:
    """SYSU-MM01: a cam3 query ignores every cam2 gallery item (same room), of any identity."""
    cam3 = q_cams == 3
    if not cam3.any():
        return None
    return cam3[:, None] & (g_cams == 2)[None, :]


def _llcm_removed(q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray,
                  g_cams: np.ndarray) -> np.ndarray | None:
    """LLCM: a query ignores the gallery items of its own identity seen by its own camera."""
    return (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] == g_cams[None, :])


@dataclass(frozen=True)
class Rule:
    """What a dataset's metric removes from each query's gallery and how it counts CMC.

    Attributes:
        removal: The camera rule (None: nothing is removed).
        identity_level: CMC counts distinct identities (SYSU, LLCM) or images (RegDB).
    """

    removal: _Removal | None
    identity_level: bool


# The one definition of each dataset's rule; a DatasetProtocol names its entry.
RULES = {
    "sysu": Rule(_sysu_removed, identity_level=True),
    "regdb": Rule(None, identity_level=False),
    "llcm": Rule(_llcm_removed, identity_level=True),
}


def rule(metric: str) -> Rule:
    """The :class:`Rule` called ``metric`` (a ``DatasetProtocol.metric``).

    Raises:
        InputError: No such metric (the message lists them).
    """
    if metric not in RULES:
        raise InputError(f"no metric named {metric!r}; the metrics are {sorted(RULES)}")
    return RULES[metric]


def removed_mask(metric: str, q_pids, q_cams, g_pids, g_cams) -> np.ndarray:
    """(Q, G) bool: the gallery items each query ignores under ``metric``'s camera rule."""
    q_pids, g_pids = _ids(q_pids, "q_pids"), _ids(g_pids, "g_pids")
    removal = rule(metric).removal
    out = None if removal is None else removal(q_pids, _ids(q_cams, "q_cams"), g_pids,
                                               _ids(g_cams, "g_cams"))
    return np.zeros((len(q_pids), len(g_pids)), dtype=bool) if out is None else out


def ranked_order(dist, removed: np.ndarray | None = None) -> np.ndarray:
    """(Q, G) gallery columns of each query, best first, removed items last.

    The order the metric's positions count in: ascending distance, ties in column order (a
    stable sort). Only for showing lists; the metric itself never sorts a row.
    """
    d = np.asarray(dist, dtype=np.float64)
    if removed is not None:
        d = np.where(removed, np.inf, d)
    return np.argsort(d, axis=1, kind="stable")


def _per_query(dist, q_pids, g_pids, q_cams, g_cams, identity_level: bool,
               chunk_size: int | None, removal: _Removal | None, max_rank: int = 1
               ) -> tuple[np.ndarray, ...]:
    """Checked inputs -> per-query (#correct kept, CMC rank, AP, INP) arrays."""
    if not isinstance(dist, torch.Tensor):
        dist = np.asarray(dist)
    if dist.ndim != 2:
        raise InputError(f"dist must be (num_query, num_gallery), got shape {tuple(dist.shape)}")
    nq, ng = dist.shape
    q_pids, g_pids = _ids(q_pids, "q_pids"), _ids(g_pids, "g_pids")
    if q_cams is not None:
        q_cams, g_cams = _ids(q_cams, "q_cams"), _ids(g_cams, "g_cams")
    for name, arr, n in (("q_pids", q_pids, nq), ("g_pids", g_pids, ng),
                         ("q_cams", q_cams, nq), ("g_cams", g_cams, ng)):
        if arr is not None and len(arr) != n:
            raise InputError(
                f"{name} has {len(arr)} entries but dist is {nq} x {ng}; pass one per row/column"
            )
    if nq == 0 or ng == 0:
        raise InputError(f"dist is {nq} x {ng}: need at least one query and one gallery item")
    if max_rank < 1:
        raise InputError(f"max_rank={max_rank} must be >= 1")

    gal = _Gallery.build(g_pids)
    m, rank = np.zeros(nq, dtype=np.int64), np.zeros(nq, dtype=np.int64)
    ap, inp = np.zeros(nq), np.zeros(nq)
    step = chunk_size or max(1, CHUNK_ELEMENTS // ng)
    for s in range(0, nq, step):
        block = _block(dist, s, s + step)
        rows = np.arange(len(block))
        removed = None if removal is None else removal(
            q_pids[s : s + step], q_cams[s : s + step], g_pids, g_cams)
        r, *vals = _search(block, rows, q_pids[s + rows], gal, removed, identity_level)
        m[s + r], rank[s + r], ap[s + r], inp[s + r] = vals
    return m, rank, ap, inp


def _averages(dist, q_pids, g_pids, q_cams, g_cams, max_rank: int, identity_level: bool,
              chunk_size: int | None, removal: _Removal | None) -> dict:
    m, rank, ap, inp = _per_query(dist, q_pids, g_pids, q_cams, g_cams, identity_level,
                                  chunk_size, removal, max_rank)
    nq = len(m)
    valid = m > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise InputError(
            f"none of the {nq} queries has a correct match in its gallery; check that query and "
            "gallery ids come from the same identity set (and the camera rule: SYSU cam3 / LLCM)"
        )
    hits = np.bincount(np.minimum(rank[valid], max_rank + 1), minlength=max_rank + 2)
    cmc = np.cumsum(hits[1 : max_rank + 1]) / num_valid
    # Per-query values summed once, in query order: the chunking cannot change the result.
    return {"cmc": cmc.astype(np.float64), "mAP": float(ap[valid].sum() / num_valid),
            "mINP": float(inp[valid].sum() / num_valid)}


def evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams, max_rank: int = 20,
                  chunk_size: int | None = None) -> dict:
    """SYSU-MM01 metrics: cam3 queries ignore cam2 gallery items, identity-level CMC.

    Args:
        dist: (Q, G) distances, smaller = closer: numpy array or torch tensor (CPU or GPU).
        q_pids: (Q,) query identities.
        g_pids: (G,) gallery identities.
        q_cams: (Q,) query cameras (1..6).
        g_cams: (G,) gallery cameras.
        max_rank: Length of the returned CMC curve. Where fewer distinct identities (or images)
            exist the curve stays at its final value instead of being shortened.
        chunk_size: Queries per chunk (default: ``CHUNK_ELEMENTS // G``); any value gives
            bit-identical results.

    Returns:
        ``{"cmc": float64 array (max_rank,), "mAP": float, "mINP": float}`` as fractions, averaged
        over the queries with a correct match in their kept gallery.

    Raises:
        InputError: On mismatched shapes, NaN/inf distances, or when no query has a match.
    """
    return metrics_by_rule("sysu", dist, q_pids, g_pids, q_cams, g_cams, max_rank, chunk_size)


def evaluate_regdb(dist, q_pids, g_pids, max_rank: int = 20, chunk_size: int | None = None) -> dict:
    """RegDB metrics: nothing removed, image-level CMC (first correct image).

    Args, return value and errors as :func:`evaluate_sysu`, without cameras.
    """
    return metrics_by_rule("regdb", dist, q_pids, g_pids, None, None, max_rank, chunk_size)


def evaluate_llcm(dist, q_pids, g_pids, q_cams, g_cams, max_rank: int = 20,
                  chunk_size: int | None = None) -> dict:
    """LLCM metrics: each query ignores its own identity's gallery items from its own camera.

    The rule of DEEN's ``eval_llcm`` (``ZYK100/LLCM``, ``AGW/eval_metrics.py``): LLCM cameras
    have a visible and a near-infrared sensor, so the same identity seen by the same camera
    number in the other modality is removed (other identities in that camera are kept). CMC is
    identity-level, AP and INP image-level, exactly as :func:`evaluate_sysu`. Ties are ranked
    by gallery order (a stable sort) where DEEN's unstable ``np.argsort`` leaves them to the
    sort algorithm; with real-valued distances ties practically never occur.

    Args, return value and errors as :func:`evaluate_sysu`; cameras are LLCM camera numbers
    (1..9) on both sides. A query whose every correct item is removed has no match and is left
    out of every average.
    """
    return metrics_by_rule("llcm", dist, q_pids, g_pids, q_cams, g_cams, max_rank, chunk_size)


def metrics_by_rule(metric: str, dist, q_pids, g_pids, q_cams=None, g_cams=None,
                    max_rank: int = 20, chunk_size: int | None = None) -> dict:
    """The metrics of a dataset's protocol by its metric name (``DatasetProtocol.metric``).

    Same numbers as :func:`evaluate_sysu` / :func:`evaluate_regdb` / :func:`evaluate_llcm`;
    cameras are only read where the rule removes something.
    """
    r = rule(metric)
    if r.removal is None:
        q_cams = g_cams = None
    return _averages(dist, q_pids, g_pids, q_cams, g_cams, max_rank, r.identity_level,
                     chunk_size, r.removal)


def per_query(metric: str, dist, q_pids, g_pids, q_cams=None, g_cams=None) -> dict:
    """Each query's own numbers under ``metric``, as the averages use them.

    Returns:
        ``{"matches": int64 (Q,) correct items kept, "rank": int64 (Q,) CMC rank (1-based;
        identities or images as the rule counts), "ap": float64 (Q,), "inp": float64 (Q,)}``;
        a query with no match has 0 everywhere (the averages leave it out).
    """
    r = rule(metric)
    if r.removal is None:
        q_cams = g_cams = None
    m, rank, ap, inp = _per_query(dist, q_pids, g_pids, q_cams, g_cams, r.identity_level, None,
                                  r.removal)
    return {"matches": m, "rank": rank, "ap": ap, "inp": inp}
