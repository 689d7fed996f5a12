"""The test engine: one embedding per needed image, per-search metrics, summaries and outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.toy_protocols import make_protocol, regdb_protocol, sysu_protocol

from tskd.core.errors import InputError
from tskd.data import protocol as proto
from tskd.data.protocol import INFRARED, VISIBLE, Search
from tskd.data.transforms import MEAN, STD
from tskd.features.protocol import embed_protocol
from tskd.metrics import evaluate_regdb, evaluate_sysu
from tskd.metrics.search import FEATURES, search_features, summarize
from tskd.runner.metrics_file import format_table, write_metrics_json

H, W = 8, 4


def images_for(protocol) -> np.ndarray:
    """uint8 (N, H, W, 3) images whose pixel (0, 0) spells the image's own index."""
    rng = np.random.default_rng(1)
    n = len(protocol.paths)
    img = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    img[:, 0, 0, 0], img[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return img


def decode(x: torch.Tensor) -> torch.Tensor:
    """Protocol index of each normalised image (B, 3, H, W), read back from pixel (0, 0)."""
    px = [torch.round((x[:, c, 0, 0] * STD[c] + MEAN[c]) * 255).long() for c in (0, 1)]
    return px[0] + 256 * px[1]


class Counting:
    """An EmbedFn: identity-structured features, recording every image it is shown."""

    def __init__(self, protocol, dim: int = 8):
        g = torch.Generator().manual_seed(2)
        n = len(protocol.paths)
        centres = torch.randn(int(protocol.pids.max()) + 1, dim, generator=g)
        self.fc = F.normalize(centres[protocol.pids] + torch.randn(n, dim, generator=g), dim=1)
        self.pool = F.normalize(self.fc + 0.7 * torch.randn(n, dim, generator=g), dim=1)
        self.modality = torch.from_numpy(protocol.modality)
        self.seen: list[int] = []
        self.calls = 0

    def __call__(self, x, modality):
        self.calls += 1
        idx = decode(x)
        assert torch.equal(modality, self.modality[idx])  # each image with its own stem
        self.seen += idx.tolist()
        return self.pool[idx], self.fc[idx]


def test_full_sysu_test_embeds_queries_plus_distinct_gallery_once():
    protocol = sysu_protocol(shots=8)  # more candidates than 10 trials draw
    assert len(protocol.searches) == 20  # 10 trials x 2 modes
    fn = Counting(protocol)
    feats = embed_protocol(fn, images_for(protocol), protocol, batch_size=16)
    queries = set(protocol.searches[0].query.tolist())
    galleries = set().union(*(s.gallery.tolist() for s in protocol.searches))
    assert len(fn.seen) == len(queries) + len(galleries) < len(protocol.paths)
    assert sorted(fn.seen) == sorted(queries | galleries)  # each exactly once
    assert fn.calls == math.ceil(len(fn.seen) / 16)  # "pool" and "fc" from the same pass
    assert feats["index"].tolist() == protocol.needed().tolist()
    torch.testing.assert_close(feats["fc"], fn.fc[feats["index"]])
    torch.testing.assert_close(feats["pool"], fn.pool[feats["index"]])


def test_each_search_equals_the_metric_on_its_own_distance_matrix():
    for protocol, metric in ((sysu_protocol(trials=2), "sysu"), (regdb_protocol(), "regdb")):
        fn = Counting(protocol)
        feats = embed_protocol(fn, images_for(protocol), protocol, batch_size=7)
        results = search_features(feats, protocol)
        assert len(results) == 2 * len(protocol.searches)
        for r, (s, name) in zip(results, [(s, f) for s in protocol.searches for f in FEATURES]):
            assert (r["setting"], r["trial"], r["feature"]) == (s.setting, s.trial, name)
            table = getattr(fn, name)
            dist = -(table[s.query] @ table[s.gallery].T)
            if metric == "sysu":
                ref = evaluate_sysu(dist, protocol.pids[s.query], protocol.pids[s.gallery],
                                    protocol.cams[s.query], protocol.cams[s.gallery])
            else:
                ref = evaluate_regdb(dist, protocol.pids[s.query], protocol.pids[s.gallery])
            np.testing.assert_array_equal(r["cmc"], ref["cmc"])
            assert r["mAP"] == pytest.approx(ref["mAP"], abs=1e-6)


def test_summaries_are_percent_with_population_std():
    protocol = sysu_protocol(trials=2)
    results = [
        {"setting": "all", "trial": 0, "feature": "fc", "cmc": np.full(20, 0.5), "mAP": 0.4,
         "mINP": 0.2},
        {"setting": "all", "trial": 1, "feature": "fc", "cmc": np.full(20, 1.0), "mAP": 0.6,
         "mINP": 0.4},
    ]
    (s,) = summarize(results, protocol)
    assert list(s) == ["dataset", "mode", "direction", "feature", "trials", "mean", "std"]
    assert (s["dataset"], s["mode"], s["direction"], s["feature"]) == (
        "sysu", "all", "infrared2visible", "fc")
    assert s["trials"][1] == {"trial": 1, "rank1": 100.0, "rank5": 100.0, "rank10": 100.0,
                              "rank20": 100.0, "mAP": 60.0, "mINP": 40.0}
    assert s["mean"]["rank1"] == 75.0 and s["std"]["rank1"] == 25.0  # ddof = 0
    assert s["mean"]["mAP"] == pytest.approx(50.0) and s["std"]["mAP"] == pytest.approx(10.0)
    reg = summarize([{**results[0], "setting": "thermal2visible"}], regdb_protocol())
    assert (reg[0]["mode"], reg[0]["direction"]) == (None, "thermal2visible")
    with pytest.raises(InputError, match="max_rank >= 20"):
        summarize([{**results[0], "cmc": np.ones(5)}], protocol)


def test_flip_averages_the_image_and_its_mirror():
    protocol = regdb_protocol()
    images = images_for(protocol)
    calls = []

    def embed(x, modality):  # a feature that sees left and right apart: row 1 of channel 2
        calls.append(x.clone())
        f = x[:, 2, 1, :]  # (B, W)
        return F.normalize(f, dim=1), F.normalize(f + 1, dim=1)

    feats = embed_protocol(embed, images, protocol, batch_size=64, flip=True)
    assert len(calls) == 2 and torch.equal(calls[1], calls[0].flip(-1))
    f = calls[0][:, 2, 1, :]
    want = F.normalize(F.normalize(f, dim=1) + F.normalize(f.flip(-1), dim=1), dim=1)
    torch.testing.assert_close(feats["pool"], want)


def test_summaries_table_and_metrics_json(tmp_path):
    protocol = sysu_protocol(trials=3)
    fn = Counting(protocol)
    feats = embed_protocol(fn, images_for(protocol), protocol, batch_size=32)
    summaries = summarize(search_features(feats, protocol), protocol)
    assert [(s["mode"], s["feature"]) for s in summaries] == [
        ("all", "fc"), ("all", "pool"), ("indoor", "fc"), ("indoor", "pool")]
    plain = format_table(summaries, {"flip": False, "rerank": False})
    assert "TTA" not in plain and "re-ranking" not in plain
    table = format_table(summaries, {"flip": True, "rerank": True})
    lines = table.splitlines()
    assert "flip TTA: on" in lines[0] and "re-ranking: on" in lines[0]
    assert len(lines) == 2 + 4 and lines[2].split()[:2] == ["all", "fc"]
    assert f"{summaries[0]['mean']['rank1']:.2f}±" in lines[2]
    doc = write_metrics_json(tmp_path / "out" / "metrics.json", summaries, "indoor",
                                {"flip": False, "rerank": True})
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk == doc
    assert (doc["mode"], doc["feature"]) == ("indoor", "fc")
    assert doc["trials"] == summaries[2]["trials"] and doc["results"] == summaries
    assert doc["options"] == {"flip": False, "rerank": True}
    with pytest.raises(InputError, match="no 'fc' summary for setting 'visible2thermal'"):
        write_metrics_json(tmp_path / "x.json", summaries, "visible2thermal")


def test_rerank_option_runs_and_changes_the_distances():
    protocol = regdb_protocol(num_ids=8, per_id=4)
    fn = Counting(protocol)
    feats = embed_protocol(fn, images_for(protocol), protocol)
    plain = search_features(feats, protocol)
    reranked = search_features(feats, protocol, rerank=True)
    assert [r["mAP"] for r in plain] != [r["mAP"] for r in reranked]
    assert all(0 < r["mAP"] <= 1 for r in reranked)


def test_bad_inputs_name_the_problem():
    protocol = regdb_protocol()
    fn = Counting(protocol)
    with pytest.raises(InputError, match="has 29 rows but the protocol lists 30 images"):
        embed_protocol(fn, images_for(protocol)[:-1], protocol)
    feats = embed_protocol(fn, images_for(protocol), protocol)
    partial = {k: v[1:] for k, v in feats.items()}
    with pytest.raises(InputError, match=r"no feature for 1 protocol images \(first: index 0, "
                                           r"img0.png\)"):
        search_features(partial, protocol)


def test_llcm_table_widens_the_setting_column_and_footnotes_deens_visible2infrared():
    recs = [(pid, cam, INFRARED) for pid in range(4) for cam in (1, 2)]
    recs += [(pid, cam, VISIBLE) for pid in range(4) for cam in (1, 2, 3)]
    ir, vis = np.arange(8), np.arange(8, len(recs))
    searches = [Search("infrared2visible", 0, ir, vis), Search("visible2infrared", 0, ir, vis)]
    protocol = make_protocol(proto.TestProtocol, "llcm", recs, searches)
    feats = embed_protocol(Counting(protocol), images_for(protocol), protocol)
    summaries = summarize(search_features(feats, protocol), protocol)
    assert [(s["mode"], s["direction"]) for s in summaries[::2]] == [
        (None, "infrared2visible"), (None, "visible2infrared")]
    lines = format_table(summaries).splitlines()
    assert lines[2].split()[:2] == ["infrared2visible", "fc"]
    assert lines[4].split()[:2] == ["visible2infrared*", "fc"]
    assert lines[-1] == ("* visible2infrared (DEEN: sampled IR as queries, every visible image "
                         "as the gallery)")


def test_test_data_counts_per_trial_and_hash_by_hand():
    """describe_test_data: counts that differ by trial are listed per trial; the hash is the
    SHA-256 of one 'relative path, id, camera, modality' line per image."""
    import hashlib

    from tskd.runner.metrics_file import describe_test_data, format_table

    root = "/data/SYSU"
    paths = [f"{root}/cam3/0001/a.jpg", f"{root}/cam3/0002/b.jpg", f"{root}/cam1/0001/c.jpg",
             f"{root}/cam1/0002/d.jpg", f"{root}/cam2/0002/e.jpg"]
    pids, cams = [1, 2, 1, 2, 2], [3, 3, 1, 1, 2]
    mods = [INFRARED, INFRARED, VISIBLE, VISIBLE, VISIBLE]
    searches = [Search("all", 0, np.array([0, 1]), np.array([2, 3])),
                Search("all", 1, np.array([0, 1]), np.array([3, 4])),
                Search("indoor", 0, np.array([1]), np.array([3, 4, 2]))]
    p = proto.TestProtocol("sysu", paths, np.array(pids), np.array(cams), np.array(mods),
                           searches)
    data = describe_test_data(p, root)
    lines = "".join(f"{path[len(root) + 1:]}\t{pid}\t{cam}\t{mod}\n"
                    for path, pid, cam, mod in zip(paths, pids, cams, mods))
    assert data["lists_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert (data["images"], data["identities"], data["split"]) == (5, 2, None)
    assert data["settings"] == {
        "all": {"queries": 2, "query_ids": 2, "gallery": 2, "gallery_ids": [2, 1]},
        "indoor": {"queries": 1, "query_ids": 1, "gallery": 3, "gallery_ids": 2}}
    summaries = summarize(search_features(
        {"index": torch.arange(5), "fc": F.normalize(torch.randn(5, 4), dim=1)}, p), p)
    assert format_table(summaries, {}, data).splitlines()[1] == (
        f"test lists {data['lists_sha256'][:12]}: 5 images, 2 ids; all: 2 queries (2 ids), "
        "gallery 2 (1-2 ids); indoor: 1 queries (1 ids), gallery 3 (2 ids)")
