"""The datamodule's own decisions: cache location, protocol assembly, loaders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import configs

from tskd.core.errors import DatasetError
from tskd.data import sysu
from tskd.data.datamodule import ReIDDataModule, default_cache_dir
from tskd.data.protocol import INFRARED, VISIBLE
from tskd.data.synthetic import make_regdb, make_sysu


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    return make_sysu(tmp_path_factory.mktemp("s") / "sysu", seed=3, num_train=12, num_val=2,
                     num_test=8, images_per_cam=2, size=(32, 16))


def test_cache_dir_falls_back_when_dataset_is_read_only(tmp_path, monkeypatch):
    data = tmp_path / "share" / "SYSU"
    data.mkdir(parents=True)
    assert default_cache_dir(data) == data.resolve() / "tskd_cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # root may ignore chmod
    fallback = default_cache_dir(data)
    assert fallback.parent == tmp_path / "xdg" / "tskd"
    assert "share_SYSU" in fallback.name


def test_sysu_protocol_indexes_standard_galleries(sysu_root):
    dm = ReIDDataModule(configs.dataset(root=str(sysu_root), img_h=16, img_w=8,
                                        settings=["all", "indoor"]),
                        configs.data(num_workers=0), mode="all", seed=0)
    dm.setup()
    p = dm.protocol
    assert len(p.searches) == 20 and p.settings() == ["all", "indoor"]
    query = sysu.query_set(str(sysu_root))
    assert [p.paths[i] for i in p.searches[0].query] == [r[0] for r in query]
    assert (p.modality[p.searches[0].query] == INFRARED).all()
    for s in p.searches:
        g = sysu.gallery_set(str(sysu_root), mode=s.setting, trial=s.trial)
        assert [p.paths[i] for i in s.gallery] == [r[0] for r in g]
        assert (p.modality[s.gallery] == VISIBLE).all()
    # the test cache row of an entry is that image, resized
    assert dm.test_images.shape == (len(p.paths), 16, 8, 3)


def test_regdb_shares_one_cache_across_splits(tmp_path):
    root = make_regdb(tmp_path / "regdb", seed=1, num_ids=10, images_per_modality=2,
                      size=(32, 16))
    dms = [ReIDDataModule(configs.dataset("regdb", root=str(root), img_h=16, img_w=8, trial=t),
                          configs.data(num_workers=0, num_ids=2, num_pos=2), mode="all", seed=0)
           for t in (1, 2)]
    for dm in dms:
        dm.setup()
    caches = sorted(p.name for p in (root / "tskd_cache").glob("*.npy"))
    assert caches == ["regdb_all_16x8.npy"]
    a, b = dms
    assert a.train_visible != b.train_visible  # two splits, two training sets, one cache
    (v2t, t2v) = a.protocol.searches
    assert (v2t.setting, t2v.setting) == ("visible2thermal", "thermal2visible")
    assert np.array_equal(v2t.query, t2v.gallery) and np.array_equal(v2t.gallery, t2v.query)
    batch = next(iter(a.train_dataloader()))
    assert batch[0].shape == (4, 3, 16, 8)
    labels, vis_rows, ir_rows = batch[3].numpy(), batch[4].numpy(), batch[5].numpy()
    assert (a.visible_labels[vis_rows] == labels).all()
    assert (a.infrared_labels[ir_rows] == labels).all()


def test_bad_protocol_arguments(sysu_root):
    def build(**fields):  # past the schema's checks: the datamodule refuses on its own
        return ReIDDataModule(configs.dataset(**fields), configs.data(), mode="all", seed=0)

    with pytest.raises(DatasetError, match="RegDB needs a split 1..10"):
        build(name="regdb", root="x", trial=11)
    with pytest.raises(DatasetError, match="SYSU gallery trials are 0..9"):
        build(root=str(sysu_root), trial=10)
    with pytest.raises(DatasetError, match="'market' is not a protocol"):
        build(name="market", root="x")


def test_test_loader_pads_evenly_under_ddp(sysu_root):
    dm = ReIDDataModule(configs.dataset(root=str(sysu_root), img_h=16, img_w=8),
                        configs.data(num_workers=0), mode="all", seed=0)
    dm.setup()
    needed = set(dm.protocol.needed().tolist())
    seen, sizes = [], []
    for rank in (0, 1):
        dm.trainer = type("T", (), {"global_rank": rank, "world_size": 2})()
        rows = [int(i) for batch in dm.test_dataloader() for i in batch[2]]
        sizes.append(len(rows))
        seen += rows
    assert sizes[0] == sizes[1] and set(seen) == needed


@pytest.mark.parametrize("pad,img_w,warns", [(10, 144, False), (2, 32, False), (10, 32, True),
                                             (10, 64, True), (6, 64, False)])
def test_pad_too_large_for_the_image_warns_when_training(sysu_root, caplog, pad, img_w, warns):
    caplog.set_level("WARNING", logger="tskd.data.datamodule")
    dm = ReIDDataModule(configs.dataset(root=str(sysu_root), img_h=2 * img_w, img_w=img_w),
                        configs.data(pad=pad, num_workers=0), mode="all", seed=0)
    dm.setup()
    dm.test_dataloader()
    assert not [r for r in caplog.records if "data.pad" in r.getMessage()]  # testing: no pad
    dm.train_dataloader()
    messages = [r.getMessage() for r in caplog.records if "data.pad" in r.getMessage()]
    assert bool(messages) == warns
    if warns:  # names the value, the width and the proportional fix (10 px per 144 px)
        assert f"data.pad={pad} is" in messages[0] and f"{img_w} px" in messages[0]
        assert f"data.pad={round(10 * img_w / 144)}." in messages[0]


def test_negative_pad_is_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"data.pad=-1: .* >= 0"):
        ReIDDataModule(configs.dataset(root=str(tmp_path), img_h=64, img_w=32),
                       configs.data(pad=-1), mode="all", seed=0)


def test_num_workers_auto_follows_the_process_cpus(monkeypatch):
    from tskd.data import datamodule

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert datamodule.resolve_num_workers("auto") == 8  # capped
    assert datamodule.resolve_num_workers("auto", devices=8) == 4  # 32 CPUs shared by 8 ranks
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert datamodule.resolve_num_workers("auto") == 3
    assert datamodule.resolve_num_workers("auto", devices=4) == 1  # never 0: not in-process
    assert datamodule.resolve_num_workers(5) == 5 and datamodule.resolve_num_workers(0) == 0
    monkeypatch.delattr(os, "sched_getaffinity")  # no affinity API (macOS): the CPU count
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert datamodule.resolve_num_workers("auto") == 6
    with pytest.raises(DatasetError, match="data.num_workers='some'"):
        datamodule.resolve_num_workers("some")


def test_num_workers_auto_reaches_the_loaders(monkeypatch, sysu_root):
    from hydra import compose, initialize_config_dir

    from tskd.checkpoints.eval_data import build_datamodule
    from tskd.config import validate

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    folder = str(Path(__file__).resolve().parents[2] / "configs")
    with initialize_config_dir(config_dir=folder, version_base="1.3"):
        cfg = compose("train", ["dataset=sysu", f"dataset.root={sysu_root}",
                                "paths.output_dir=unused"])
    c = validate(cfg)
    assert c.data.num_workers == "auto"
    assert build_datamodule(c).num_workers == 6
    assert build_datamodule(c, devices=2).num_workers == 3


def test_test_only_caches_only_the_test_images(tmp_path):
    root = make_sysu(tmp_path / "sysu", seed=4, num_train=5, num_val=2, num_test=4,
                     images_per_cam=2, size=(32, 16))
    dm = ReIDDataModule(configs.dataset(root=str(root), img_h=16, img_w=8),
                        configs.loader_data(num_workers=0), mode="all", seed=0, test_only=True)
    counts = dm.train_label_counts()
    vis, ir = sysu.train_set(str(root))
    assert counts == {"num_classes": 7, "num_visible": len(vis), "num_infrared": len(ir)}
    assert not (root / "tskd_cache").exists()  # counting reads the lists only
    dm.prepare_data()
    dm.setup("test")
    assert sorted(p.name for p in (root / "tskd_cache").glob("*.npy")) == ["sysu_test_16x8.npy"]
    assert dm.num_classes == 7 and dm.test_images.shape[1:] == (16, 8, 3)
    assert len(next(iter(dm.test_dataloader()))[0]) > 0
