"""Running a protocol's searches on embedded features, and their per-setting summaries.

A :class:`~tskd.data.protocol.TestProtocol` lists every test image and the searches over them
(SYSU: 10 gallery trials x search mode; RegDB: one split, both directions; LLCM: 10 trials x
both directions). Each search only indexes the feature matrix, so ten trials cost one feature
pass. Each search is scored by its dataset's metric (``DatasetProtocol.metric``, a rule of
:mod:`tskd.metrics.functional`). Results are reported per (setting, feature) as mean and std
over the trials, in percent, in the metrics.json schema of docs/evaluation.md. Standard
deviations are population values (ddof=0): the trials are the whole set.
"""

from __future__ import annotations

import numpy as np
import torch

from tskd.core.errors import InputError
from tskd.data import registry
from tskd.data.protocol import TestProtocol
from tskd.metrics.functional import metrics_by_rule
from tskd.metrics.rerank import k_reciprocal_rerank

FEATURES = ("fc", "pool")  # report order: the BN-neck feature is the primary one
RANKS = (1, 5, 10, 20)
METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def _rows_of(features: dict, protocol: TestProtocol) -> np.ndarray:
    """Feature row of every protocol entry (-1 where absent); checks each needed one is there."""
    index = np.asarray(torch.as_tensor(features["index"]).cpu(), dtype=np.int64)
    n = len(protocol.paths)
    if len(index) and (index.min() < 0 or index.max() >= n):
        raise InputError(f"feature index {index.min()}..{index.max()} is outside the "
                           f"protocol's 0..{n - 1}; the features belong to another test set")
    rows = np.full(n, -1, dtype=np.int64)
    rows[index] = np.arange(len(index))
    needed = protocol.needed()
    missing = needed[rows[needed] < 0]
    if len(missing):
        raise InputError(f"no feature for {len(missing)} protocol images (first: index "
                           f"{missing[0]}, {protocol.paths[missing[0]]}); embed protocol.needed()")
    return rows


def search_features(features: dict, protocol: TestProtocol, rerank: bool = False,
                    max_rank: int = 20) -> list[dict]:
    """Metrics of every search and feature, as raw fractions.

    Distances are cosine (features are L2-normalised): searches rank by -similarity; with
    ``rerank`` the original distance is ``1 - similarity``. Computation runs on the features'
    device; one similarity matrix per (query set, feature) serves all galleries.

    Returns:
        One dict per (search, feature), in protocol order then :data:`FEATURES` order:
        ``{"setting", "trial", "feature", "cmc", "mAP", "mINP"}``.
    """
    rows = _rows_of(features, protocol)
    names = [f for f in FEATURES if f in features]
    if not names:
        raise InputError(f"features has none of {FEATURES}; got keys {sorted(features)}")
    metric = registry.get(protocol.dataset).metric
    # The galleries of all searches sharing a query set, as one column set per query set.
    union: dict[bytes, np.ndarray] = {}
    for s in protocol.searches:
        key = np.asarray(s.query).tobytes()
        union[key] = np.union1d(union.get(key, np.zeros(0, np.int64)), s.gallery)
    sims: dict[tuple[str, bytes], tuple] = {}
    results = []
    for s in protocol.searches:
        key = np.asarray(s.query).tobytes()
        cols = np.searchsorted(union[key], s.gallery)  # this gallery inside the union
        for name in names:
            feat = features[name]

            def pick(idx, feat=feat):
                return feat[torch.as_tensor(rows[idx], device=feat.device)]

            if (name, key) not in sims:
                q = pick(s.query)  # (Q, C)
                sims[(name, key)] = (q @ pick(union[key]).T,  # (Q, |union|)
                                     1 - q @ q.T if rerank else None)  # (Q, Q)
            sim_all, q_q = sims[(name, key)]
            sim = sim_all[:, torch.as_tensor(cols, device=feat.device)]  # (Q, G)
            if rerank:
                g = pick(s.gallery)
                dist = k_reciprocal_rerank(1 - sim, q_q, 1 - g @ g.T)
            else:
                dist = -sim
            out = metrics_by_rule(metric, dist, protocol.pids[s.query], protocol.pids[s.gallery],
                                  protocol.cams[s.query], protocol.cams[s.gallery],
                                  max_rank=max_rank)
            results.append({"setting": s.setting, "trial": s.trial, "feature": name, **out})
    return results


def setting_of(summary: dict) -> str:
    """The search setting of a summary: the label its dataset uses (SYSU mode, else direction)."""
    return summary[registry.get(summary["dataset"]).setting_field]


def summarize(results: list[dict], protocol: TestProtocol) -> list[dict]:
    """One metrics.json summary per (setting, feature): trials, mean and std, in percent."""
    spec = registry.get(protocol.dataset)
    out = []
    for setting in protocol.settings():
        for name in FEATURES:
            mine = [r for r in results if r["setting"] == setting and r["feature"] == name]
            if not mine:
                continue
            trials = []
            for r in mine:
                if len(r["cmc"]) < max(RANKS):
                    raise InputError(f"CMC has {len(r['cmc'])} ranks; summaries report rank "
                                       f"{max(RANKS)}: evaluate with max_rank >= {max(RANKS)}")
                row = {f"rank{k}": 100 * float(r["cmc"][k - 1]) for k in RANKS}
                row.update(mAP=100 * float(r["mAP"]), mINP=100 * float(r["mINP"]))
                trials.append({"trial": int(r["trial"]), **row})
            table = np.array([[t[k] for k in METRIC_KEYS] for t in trials])  # (trials, 6)
            out.append({
                "dataset": protocol.dataset, **spec.labels(setting),
                "feature": name, "trials": trials,
                "mean": dict(zip(METRIC_KEYS, map(float, table.mean(axis=0)))),
                "std": dict(zip(METRIC_KEYS, map(float, table.std(axis=0, ddof=0)))),
            })
    return out
