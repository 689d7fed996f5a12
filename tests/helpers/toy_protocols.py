"""Toy test protocols in the SYSU-MM01 and RegDB shapes, with ids, cameras and trials by hand.

No images: each record is (id, camera, modality), and the searches are drawn the way the real
protocols draw them, so evaluation and metric tests can count what each search must see.
"""

from __future__ import annotations

import random

import numpy as np

from tskd.data import protocol as proto
from tskd.data.protocol import INFRARED, VISIBLE, Search


def sysu_protocol(num_ids: int = 6, trials: int = 10, shots: int = 3):
    """SYSU-shaped: IR queries; ``shots`` candidates per (id, visible cam); 10 trials x 2 modes."""
    rng = np.random.default_rng(0)
    recs = [(pid, cam, INFRARED) for pid in range(num_ids) for cam in (3, 6)
            for _ in range(rng.integers(1, 4))]
    nq, cand = len(recs), {}
    for pid in range(num_ids):
        for cam in (1, 2, 4, 5):
            cand[(pid, cam)] = list(range(len(recs), len(recs) + shots))
            recs += [(pid, cam, VISIBLE)] * shots
    searches = []
    for mode, cams in (("all", (1, 2, 4, 5)), ("indoor", (1, 2))):
        for t in range(trials):
            r = random.Random(t)
            gallery = [r.choice(cand[(pid, cam)]) for pid in range(num_ids) for cam in cams]
            searches.append(Search(mode, t, np.arange(nq), np.array(gallery)))
    return make_protocol(proto.TestProtocol, "sysu", recs, searches)


def regdb_protocol(num_ids: int = 5, per_id: int = 3):
    """RegDB-shaped: ``per_id`` images per id and modality, trial 4, both directions."""
    recs = [(pid, 1, VISIBLE) for pid in range(num_ids) for _ in range(per_id)]
    recs += [(pid, 2, INFRARED) for pid in range(num_ids) for _ in range(per_id)]
    n = num_ids * per_id
    vis, th = np.arange(n), np.arange(n, 2 * n)
    searches = [Search("visible2thermal", 4, vis, th), Search("thermal2visible", 4, th, vis)]
    return make_protocol(proto.TestProtocol, "regdb", recs, searches)


def make_protocol(cls, dataset, recs, searches):
    """A ``cls`` protocol of (id, camera, modality) records, one placeholder path each."""
    return cls(dataset, [f"img{i}.png" for i in range(len(recs))], np.array([r[0] for r in recs]),
               np.array([r[1] for r in recs]), np.array([r[2] for r in recs]), searches)
