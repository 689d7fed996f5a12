"""The test engine: embed a protocol's images once, run every search by indexing, report.

A :class:`~tskd.data.protocol.TestProtocol` lists every test image and the searches over them
(SYSU: 10 gallery trials x search mode; RegDB: one split, both directions). The images any search
uses are embedded once each, "pool" and "fc" from the same forward pass; each search then only
indexes the feature matrix, so ten trials cost one feature pass. Results are reported per
(setting, feature) as mean and std over the trials, in percent, in the metrics.json schema of
the README. Standard deviations are population values (ddof=0): the trials are the whole set.

Off-by-default options, printed with the results whenever used: flip test-time augmentation
(average the features of the image and its mirror) and k-reciprocal re-ranking.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tskd.data.protocol import TestProtocol
from tskd.data.transforms import normalize_batch
from tskd.errors import DatasetError
from tskd.metrics import evaluate_regdb, evaluate_sysu
from tskd.metrics.rerank import k_reciprocal_rerank

log = logging.getLogger(__name__)

# (images (B, 3, H, W) normalised float, modality (B,) int64) -> (pool (B, C), fc (B, C)).
EmbedFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
FEATURES = ("fc", "pool")  # report order: the BN-neck feature is the primary one
RANKS = (1, 5, 10, 20)
METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


@torch.no_grad()  # plain tensors out (inference-mode tensors refuse later in-place use)
def embed_protocol(embed_fn: EmbedFn, images, protocol: TestProtocol, batch_size: int = 128,
                   flip: bool = False, device: str | torch.device = "cpu") -> dict:
    """Embed each image the protocol needs exactly once.

    Args:
        embed_fn: The network's test pass (put the model in eval mode first).
        images: uint8 (N, H, W, 3) array (e.g. a memmap) aligned with ``protocol.paths``.
        protocol: The searches; only ``protocol.needed()`` rows are read.
        batch_size: Images per call of ``embed_fn``.
        flip: Average each feature with that of the horizontally flipped image, re-normalised.
        device: Where ``embed_fn`` runs.

    Returns:
        ``{"index": int64 (M,), "pool": (M, C), "fc": (M, C)}`` float32 CPU tensors, rows in
        ``index`` order.
    """
    if len(images) != len(protocol.paths):
        raise DatasetError(f"the test image array has {len(images)} rows but the protocol lists "
                           f"{len(protocol.paths)} images; rebuild the test cache")
    index = protocol.needed()
    pools, fcs = [], []
    for s in range(0, len(index), batch_size):
        rows = index[s : s + batch_size]
        batch = torch.from_numpy(np.ascontiguousarray(images[rows])).to(device)  # (B, H, W, 3)
        x = normalize_batch(batch)  # (B, 3, H, W)
        modality = torch.from_numpy(protocol.modality[rows]).to(device)
        pool, fc = embed_fn(x, modality)
        if flip:
            pool_f, fc_f = embed_fn(x.flip(-1), modality)  # mirror along the width
            pool, fc = F.normalize(pool + pool_f, dim=1), F.normalize(fc + fc_f, dim=1)
        pools.append(pool.float().cpu())
        fcs.append(fc.float().cpu())
    log.info("embedded %d test images (flip TTA %s)", len(index), "on" if flip else "off")
    return {"index": torch.from_numpy(index), "pool": torch.cat(pools), "fc": torch.cat(fcs)}


def _rows_of(features: dict, protocol: TestProtocol) -> np.ndarray:
    """Feature row of every protocol entry (-1 where absent); checks each needed one is there."""
    index = np.asarray(torch.as_tensor(features["index"]).cpu(), dtype=np.int64)
    n = len(protocol.paths)
    if len(index) and (index.min() < 0 or index.max() >= n):
        raise DatasetError(f"feature index {index.min()}..{index.max()} is outside the "
                           f"protocol's 0..{n - 1}; the features belong to another test set")
    rows = np.full(n, -1, dtype=np.int64)
    rows[index] = np.arange(len(index))
    missing = protocol.needed()[rows[protocol.needed()] < 0]
    if len(missing):
        raise DatasetError(f"no feature for {len(missing)} protocol images (first: index "
                           f"{missing[0]}, {protocol.paths[missing[0]]}); embed protocol.needed()")
    return rows


def evaluate_features(features: dict, protocol: TestProtocol, rerank: bool = False,
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
        raise DatasetError(f"features has none of {FEATURES}; got keys {sorted(features)}")
    sysu = protocol.dataset == "sysu"
    if not sysu and protocol.dataset != "regdb":
        raise DatasetError(f"protocol.dataset={protocol.dataset!r}: expected 'sysu' or 'regdb'")
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
            q_pids, g_pids = protocol.pids[s.query], protocol.pids[s.gallery]
            if sysu:
                out = evaluate_sysu(dist, q_pids, g_pids, protocol.cams[s.query],
                                    protocol.cams[s.gallery], max_rank=max_rank)
            else:
                out = evaluate_regdb(dist, q_pids, g_pids, max_rank=max_rank)
            results.append({"setting": s.setting, "trial": s.trial, "feature": name, **out})
    return results


def _setting_keys(dataset: str, setting: str) -> dict:
    if dataset == "sysu":
        return {"mode": setting, "direction": "infrared2visible"}
    return {"mode": None, "direction": setting}


def setting_of(summary: dict) -> str:
    """The search setting of a summary: SYSU mode or RegDB direction."""
    return summary["mode"] if summary["dataset"] == "sysu" else summary["direction"]


def summarize(results: list[dict], protocol: TestProtocol) -> list[dict]:
    """One metrics.json summary per (setting, feature): trials, mean and std, in percent."""
    out = []
    for setting in protocol.settings():
        for name in FEATURES:
            mine = [r for r in results if r["setting"] == setting and r["feature"] == name]
            if not mine:
                continue
            trials = []
            for r in mine:
                if len(r["cmc"]) < max(RANKS):
                    raise DatasetError(f"CMC has {len(r['cmc'])} ranks; summaries report rank "
                                       f"{max(RANKS)}: evaluate with max_rank >= {max(RANKS)}")
                row = {f"rank{k}": 100 * float(r["cmc"][k - 1]) for k in RANKS}
                row.update(mAP=100 * float(r["mAP"]), mINP=100 * float(r["mINP"]))
                trials.append({"trial": int(r["trial"]), **row})
            table = np.array([[t[k] for k in METRIC_KEYS] for t in trials])  # (trials, 6)
            out.append({
                "dataset": protocol.dataset, **_setting_keys(protocol.dataset, setting),
                "feature": name, "trials": trials,
                "mean": dict(zip(METRIC_KEYS, map(float, table.mean(axis=0)))),
                "std": dict(zip(METRIC_KEYS, map(float, table.std(axis=0, ddof=0)))),
            })
    return out


def run_protocol(embed_fn: EmbedFn, images, protocol: TestProtocol, *, batch_size: int = 128,
                 flip: bool = False, rerank: bool = False,
                 device: str | torch.device = "cpu") -> list[dict]:
    """Embed once, evaluate every search, return the summaries (see :func:`summarize`)."""
    features = embed_protocol(embed_fn, images, protocol, batch_size, flip, device)
    features = {k: v.to(device) if k != "index" else v for k, v in features.items()}
    return summarize(evaluate_features(features, protocol, rerank=rerank), protocol)


def format_table(summaries: list[dict], options: dict | None = None) -> str:
    """A printable table: one row per setting x feature, ``mean±std`` per metric."""
    options = options or {}
    trials = max((len(s["trials"]) for s in summaries), default=0)
    head = f"{summaries[0]['dataset'] if summaries else '?'} test, {trials} trial(s)"
    flags = [label for key, label in (("flip", "flip TTA: on"), ("rerank", "re-ranking: on"))
             if options.get(key)]
    lines = ["; ".join([head, *flags]),
             f"{'setting':<16}{'feature':<8}" + "".join(f"{k:>14}" for k in
                                                         ("R1", "R5", "R10", "R20", "mAP", "mINP"))]
    for s in summaries:
        cells = "".join(f"{s['mean'][k]:>8.2f}±{s['std'][k]:<5.2f}" for k in METRIC_KEYS)
        lines.append(f"{setting_of(s):<16}{s['feature']:<8}{cells}".rstrip())
    return "\n".join(lines)


def write_metrics_json(path: str | Path, summaries: list[dict], primary_setting: str,
                       options: dict | None = None) -> dict:
    """Write metrics.json: the primary ("fc") summary at top level, plus all results/options."""
    primary = [s for s in summaries if setting_of(s) == primary_setting and s["feature"] == "fc"]
    if not primary:
        have = sorted({setting_of(s) for s in summaries})
        raise DatasetError(f"no 'fc' summary for setting {primary_setting!r}; have {have}")
    options = options or {}
    doc = {**primary[0], "results": summaries,
           "options": {"flip": bool(options.get("flip")), "rerank": bool(options.get("rerank"))}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc
