"""Ranked-list pictures (tskd.apps.visualize): layout, border colours, ranking maths, the Hydra
app."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.entry_runs import REPO, run_entry
from PIL import Image

from tskd.apps.visualize import (
    BORDER,
    GREEN,
    MODALITY_COLOURS,
    PAD,
    RED,
    SEP,
    TITLE_H,
    Ranking,
    Row,
    Tile,
    grid_size,
    rank,
    render_ranked_list,
    select_queries,
)
from tskd.core.errors import ConfigError, DatasetError
from tskd.data.protocol import INFRARED, VISIBLE


def _tile(value: int, modality: int, correct=None, size=(40, 20)) -> Tile:
    return Tile(np.full((*size, 3), value, np.uint8), ("0.83", "v1"), modality,
                correct)


def _toy_rows() -> list[Row]:
    """Two infrared queries; results right/wrong as (T, F, T) and (F, F) (one slot empty)."""
    return [
        Row("all · trial 0 · query 3 · rank-1 correct", _tile(200, INFRARED),
            [_tile(10, VISIBLE, True), _tile(20, VISIBLE, False), _tile(30, VISIBLE, True)]),
        Row("all · trial 0 · query 9 · rank-1 wrong", _tile(210, INFRARED),
            [_tile(40, VISIBLE, False), _tile(50, VISIBLE, False)]),
    ]


def test_grid_size_hand_computed():
    # tile 40x20 -> slot 50x30; row = title 16 + slot 50 + two caption lines 26 = 92
    assert grid_size(2, 3, 40, 20) == (8 + 30 + 24 + 3 * 30 + 2 * 8 + 8, 8 + 2 * (92 + 8))
    assert grid_size(2, 3, 40, 20) == (176, 208)
    # the real size: slot 298x154; 8 + 154 + 24 + 10 * 154 + 9 * 8 + 8, 8 + 16 + 298 + 26 + 8
    assert grid_size(1, 10, 288, 144) == (1806, 356)


def test_render_toy_ranking_sizes_and_borders(tmp_path):
    img = render_ranked_list(_toy_rows(), topk=3)
    assert img.size == (176, 208)
    img.save(tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size == (176, 208)
    expected = [[True, False, True], [False, False, None]]
    for r, flags in enumerate(expected):
        y = PAD + r * (92 + PAD) + TITLE_H  # top of the row's tiles
        # the query: framed in the infrared colour, its pixels inside the frame
        assert img.getpixel((PAD + 1, y + 1)) == MODALITY_COLOURS[INFRARED]
        assert img.getpixel((PAD + BORDER + 3, y + BORDER + 3)) == (200 + 10 * r,) * 3
        for j, ok in enumerate(flags):
            x = PAD + 30 + SEP + j * (30 + PAD)
            frame = {True: GREEN, False: RED, None: (255, 255, 255)}[ok]
            for px in [(x + 1, y + 1), (x + BORDER - 1, y + 25), (x + 28, y + 48)]:
                assert img.getpixel(px) == frame, (r, j, px)
            if ok is not None:
                assert img.getpixel((x + BORDER + 2, y + BORDER + 2)) != frame
            # caption strip under each result: the visible colour (absent for the empty slot)
            strip = img.getpixel((x + 27, y + 50 + 13 + 11))
            assert strip == (MODALITY_COLOURS[VISIBLE] if ok is not None else (255,) * 3)
    pixels = np.asarray(img).reshape(-1, 3)
    assert (pixels == GREEN).all(1).sum() > 0 and (pixels == RED).all(1).sum() > 0


def test_render_scales_tiles_and_rejects_empty():
    img = render_ranked_list(_toy_rows(), topk=4, tile_size=(80, 40))
    assert img.size == grid_size(2, 4, 80, 40) == (8 + 50 + 24 + 4 * 50 + 3 * 8 + 8, 8 + 2 * 140)
    with pytest.raises(ConfigError, match="no queries to draw"):
        render_ranked_list([])


def _toy_features():
    q = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    g = np.array([[0.6, 0.8], [1, 0], [0.8, 0.6], [0.9, 0.436]], np.float32)
    return q, g, np.array([1, 2, 9]), np.array([1, 2, 1, 3]), np.array([3, 6, 3]), \
        np.array([1, 2, 2, 4])


def test_rank_hand_computed():
    q, g, qp, gp, qc, gc = _toy_features()
    r = rank(q, g, qp, gp, qc, gc, metric="sysu")
    # query 0 (cam3) never sees the two cam2 items: kept order g3 (wrong), g0 (right)
    assert r.order[0, :2].tolist() == [3, 0] and r.kept[0].tolist() == [True, True, False, False]
    assert r.correct[0].tolist() == [False, True, False, False]
    assert r.ap[0] == pytest.approx(0.5) and r.first_hit[0] == 2
    np.testing.assert_allclose(r.sims[0, :2], [0.9, 0.6], atol=1e-6)
    # query 1 (cam6): all kept; order g0 .8, g2 .6, g3 .436, g1 0 -> its id last: AP 1/4
    assert r.order[1].tolist() == [0, 2, 3, 1] and r.ap[1] == pytest.approx(0.25)
    assert np.isnan(r.ap[2]) and r.first_hit[2] == 0  # id 9 is not in the gallery
    # RegDB keeps everything: g1 1.0 (x), g3 .9 (x), g2 .8 (ok), g0 .6 (ok)
    r2 = rank(q, g, qp, gp, qc, gc, metric="regdb")
    assert r2.order[0].tolist() == [1, 3, 2, 0]
    assert r2.ap[0] == pytest.approx((1 / 3 + 2 / 4) / 2) and r2.first_hit[0] == 3


def test_select_queries():
    n = 4
    r = Ranking(np.zeros((n, 1), int), np.zeros((n, 1)), np.ones((n, 1), bool),
                np.zeros((n, 1), bool), np.array([0.5, 0.5, 0.2, np.nan]), np.array([1, 3, 2, 0]))
    qidx = np.array([10, 11, 12, 13])
    # lowest AP first; equal AP: first correct match further down first; no-match query skipped
    assert select_queries(r, qidx, "worst", 8).tolist() == [2, 1, 0]
    assert select_queries(r, qidx, "worst", 2).tolist() == [2, 1]
    picked = select_queries(r, qidx, "random", 2, seed=5)
    assert len(set(picked.tolist())) == 2 and set(picked.tolist()) <= {0, 1, 2}
    assert picked.tolist() == select_queries(r, qidx, "random", 2, seed=5).tolist()
    assert select_queries(r, qidx, [13, 10], 8).tolist() == [3, 0]
    with pytest.raises(ConfigError, match=r"vis.queries \[99\] are not queries .*10..13"):
        select_queries(r, qidx, [10, 99], 8)
    with pytest.raises(ConfigError, match="use worst, random or a list"):
        select_queries(r, qidx, "best", 8)
    none = Ranking(r.order, r.sims, r.kept, r.correct, np.full(n, np.nan), np.zeros(n, int))
    with pytest.raises(DatasetError, match="no query of this search has a correct match"):
        select_queries(none, qidx, "worst", 8)


def _app_args(tiny, run_dir, *extra):
    ckpt, root = tiny
    return [f"ckpt={ckpt}", "dataset=synthetic", f"dataset.root={root}", "dataset.synthetic=null",
            f"dataset.cache_dir={root.parent / 'cache'}", "data.num_workers=0",
            f"hydra.run.dir={run_dir}", *extra]


@pytest.mark.e2e
def test_app_writes_worst_queries_grid(tiny, tmp_path):
    run = tmp_path / "run"
    run_entry("-m tskd.apps.visualize", _app_args(tiny, run, "vis.num_queries=3", "vis.topk=4"),
              timeout=120)
    png = run / "ranked_lists" / "all_trial0_worst.png"
    img = Image.open(png)
    # tiles at the checkpoint's cached size 64x32: slot 74x42, row 16 + 74 + 26 = 116
    assert img.size == grid_size(3, 4, 64, 32) == (8 + 42 + 24 + 4 * 42 + 3 * 8 + 8, 8 + 3 * 124)
    facts = json.loads(png.with_suffix(".json").read_text())
    assert facts["setting"] == "all" and facts["trial"] == 0 and len(facts["queries"]) == 3
    aps = [q["ap"] for q in facts["queries"]]
    assert aps == sorted(aps)  # worst first
    img = img.convert("RGB")
    for r, q in enumerate(facts["queries"]):
        assert q["modality"] == "infrared" and q["cam"] in (3, 6)
        sims = [res["similarity"] for res in q["results"]]
        assert sims == sorted(sims, reverse=True) and 1 <= len(sims) <= 4
        y = PAD + r * (116 + PAD) + TITLE_H
        for j, res in enumerate(q["results"]):
            assert res["correct"] == (res["pid"] == q["pid"])
            assert not (q["cam"] == 3 and res["cam"] == 2)  # SYSU's same-room rule
            x = PAD + 42 + SEP + j * (42 + PAD)
            assert img.getpixel((x + 1, y + 1)) == (GREEN if res["correct"] else RED)


@pytest.mark.e2e
def test_app_chosen_queries_scaled_indoor(tiny, tmp_path):
    run = tmp_path / "run"
    run_entry("-m tskd.apps.visualize", _app_args(tiny, run, "mode=indoor", "vis.queries=[0,2]",
                                             "vis.topk=2", "vis.scale=2"), timeout=120)
    png = run / "ranked_lists" / "indoor_trial0_chosen.png"
    assert Image.open(png).size == grid_size(2, 2, 128, 64)
    facts = json.loads(png.with_suffix(".json").read_text())
    assert [q["index"] for q in facts["queries"]] == [0, 2]
    assert all(res["cam"] in (1, 2) for q in facts["queries"] for res in q["results"])


def test_bad_options_refused_before_loading(tmp_path):
    from hydra import compose, initialize_config_dir

    from tskd.apps.visualize import write_ranked_lists

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("visualize", overrides=[
            f"ckpt={tmp_path / 'never_read.ckpt'}", "dataset=sysu", "vis.setting=visible2thermal",
            "vis.feature=logits", "vis.queries=best", "vis.topk=0"])
    with pytest.raises(ConfigError) as err:
        write_ranked_lists(cfg)
    msg = str(err.value)
    assert msg.startswith("invalid ranked-list config, nothing was run: ")
    for part in ("vis.setting='visible2thermal' must be one of all|indoor or null",
                 "vis.feature='logits' must be one of fc|pool",
                 "vis.queries='best' must be one of worst|random or a list of protocol indices",
                 "vis.topk=0 must be a whole number >= 1"):
        assert part in msg
    assert cfg.vis.num_queries == 8 and cfg.vis.topk == 0 and cfg.task_name == "visualize"


def _compose_visualize(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("visualize", overrides=overrides)


def test_app_from_the_checkpoint_alone(tiny, tmp_path):
    """No dataset key: the checkpoint's dataset, root and image size; only the test cache."""
    from tskd.apps.visualize import write_ranked_lists

    ckpt, root = tiny
    overrides = [f"ckpt={ckpt}", "data.num_workers=0", "vis.num_queries=2", "vis.topk=3",
                 f"paths.output_dir={tmp_path / 'run'}"]
    png = write_ranked_lists(_compose_visualize(overrides), overrides)
    assert png == tmp_path / "run" / "ranked_lists" / "all_trial0_worst.png"
    assert Image.open(png).size == grid_size(2, 3, 64, 32)  # the checkpoint's 64x32
    cached = sorted(p.name for p in (root / "tskd_cache").glob("*.npy"))
    assert cached == ["sysu_test_64x32.npy"]  # no training cache


def test_setting_of_the_other_dataset_refused_once_the_checkpoint_is_read(tiny, tmp_path):
    from tskd.apps.visualize import write_ranked_lists

    ckpt, root = tiny
    overrides = [f"ckpt={ckpt}", "vis.setting=visible2thermal",
                 f"dataset.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"vis.setting='visible2thermal' \(use one of "
                                           r"\['all', 'indoor'\] or null for sysu\)"):
        write_ranked_lists(_compose_visualize(overrides), overrides)
    assert not (tmp_path / "cache").exists()  # refused before any image was cached


def test_non_finite_non_integer_and_file_options_refused_before_loading(tmp_path):
    from tskd.apps.visualize import write_ranked_lists

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    cfg = _compose_visualize([f"ckpt={tmp_path / 'never_read.ckpt'}", "dataset=sysu",
                              "vis.scale=inf", "vis.topk=abc", "vis.num_queries=2.5",
                              f"vis.out_dir={a_file}"])
    with pytest.raises(ConfigError) as err:
        write_ranked_lists(cfg)
    msg = str(err.value)
    for part in ("vis.scale=inf must be a finite number > 0",
                 "vis.topk='abc' must be a whole number >= 1",
                 "vis.num_queries=2.5 must be a whole number >= 1",
                 f"vis.out_dir='{a_file}' must be a folder you can write (it is a file"):
        assert part in msg
    assert a_file.read_text() == "mine"
