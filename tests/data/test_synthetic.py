"""Synthetic dataset: determinism, the real layouts' quirks, counts, speed and the marker logic."""

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from tskd.data import regdb, synthetic, sysu
from tskd.errors import DatasetError

SMALL_SYSU = dict(num_train=6, num_val=2, num_test=9, images_per_cam=2, size=(32, 16))
SMALL_REGDB = dict(num_ids=8, images_per_modality=2, size=(32, 16))


@pytest.fixture(scope="module")
def default_sysu(tmp_path_factory):
    start = time.perf_counter()
    root = synthetic.make_sysu(tmp_path_factory.mktemp("sysu"))
    return root, time.perf_counter() - start


@pytest.fixture(scope="module")
def default_regdb(tmp_path_factory):
    start = time.perf_counter()
    root = synthetic.make_regdb(tmp_path_factory.mktemp("regdb"))
    return root, time.perf_counter() - start


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


def _bytes(root, rel):
    with open(os.path.join(root, rel), "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("make, kw", [(synthetic.make_sysu, SMALL_SYSU),
                                      (synthetic.make_regdb, SMALL_REGDB)])
def test_deterministic_from_seed(tmp_path, make, kw):
    a, b, c = (make(tmp_path / n, seed=s, **kw) for n, s in (("a", 3), ("b", 3), ("c", 4)))
    assert _files(a) == _files(b)
    images = [f for f in _files(a) if f.endswith((".jpg", ".bmp"))]
    texts = [f for f in _files(a) if f.endswith(".txt")]
    picked = images[:: max(1, len(images) // 5)] + texts
    assert all(_bytes(a, f) == _bytes(b, f) for f in picked)
    common = [f for f in images if os.path.exists(os.path.join(c, f))]
    assert common and all(_bytes(a, f) != _bytes(c, f) for f in common[:5])


def test_sysu_layout_loads_with_real_quirks(default_sysu):
    root, seconds = default_sysu
    assert seconds < 60  # a few seconds on an idle core; generous for loaded CI machines
    train, val, test = (sysu.read_ids(root, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (40, 8, 24)
    ids = sorted(train + val + test)
    assert len(set(ids)) == 72 and all(b - a >= 2 for a, b in zip(ids, ids[1:]))
    visible, infrared = sysu.train_set(root)
    assert sorted({r[1] for r in visible}) == list(range(48)) == sorted({r[1] for r in infrared})
    for pid in val:  # validation ids have no cam1/cam2 folders
        assert not any(os.path.isdir(os.path.join(root, f"cam{c}", f"{pid:04d}")) for c in (1, 2))
    present = {(r[1], r[2]) for r in sysu.gallery_candidates(root)}
    query = sysu.query_set(root)
    assert {r[1] for r in query} == set(test)  # every test id has an infrared image
    assert {p for p, _ in present} == set(test)  # ... and a visible one
    indoor = {r[1] for r in sysu.gallery_candidates(root, "indoor")}
    assert indoor == {p for i, p in enumerate(sorted(test)) if i % 8 != 7}
    assert len(present) < 4 * len(test)  # some test ids lack some cameras
    total = len(visible) + len(infrared) + len(query) + len(sysu.gallery_candidates(root))
    assert 300 <= total <= 2000
    for trial in (0, 9):
        gallery = sysu.gallery_set(root, "all", trial)
        assert len(gallery) == len(present) and {(r[1], r[2]) for r in gallery} == present


def test_regdb_layout_loads(default_regdb):
    root, seconds = default_regdb
    assert seconds < 60
    assert len(regdb.listed_paths(root)) == 40 * 6 * 2
    splits = set()
    for trial in regdb.TRIALS:
        visible, thermal = regdb.train_set(root, trial)
        assert len(visible) == len(thermal) == 20 * 6
        assert sorted({r[1] for r in visible}) == list(range(20))
        tv, tt = regdb.test_set(root, trial)
        test_ids = {r[1] for r in tv}
        train_ids = {int(r[0].split(os.sep)[-2]) for r in visible}
        assert len(test_ids) == 20 and test_ids.isdisjoint(train_ids)
        assert test_ids | train_ids == set(range(1, 41))
        # training labels follow ascending raw ids
        assert [int(r[0].split(os.sep)[-2]) for r in visible[::6]] == sorted(train_ids)
        splits.add(frozenset(train_ids))
    assert len(splits) == 10
    with open(os.path.join(root, "idx", "train_visible_1.txt")) as fh:
        line = fh.readline().split()
    assert line[0].startswith("Visible/") and line[1] == "0"


def test_images_size_and_infrared_single_intensity(default_sysu, default_regdb):
    thermal = np.asarray(Image.open(regdb.test_set(default_regdb[0], 1)[1][0][0]))
    assert thermal.shape == (128, 64, 3)
    assert (thermal[..., 0] == thermal[..., 1]).all() and (thermal[..., 1] == thermal[..., 2]).all()
    ir = np.asarray(Image.open(sysu.query_set(default_sysu[0])[0][0])).astype(int)
    assert np.abs(ir - ir[..., :1]).max() <= 3  # JPEG keeps R=G=B up to rounding
    vis = np.asarray(Image.open(sysu.train_set(default_sysu[0])[0][0][0])).astype(int)
    assert np.abs(vis - vis[..., :1]).max() > 40  # visible images are coloured


def test_infrared_comes_from_materials_not_colours():
    rng = np.random.default_rng(0)
    people = [synthetic._identity(rng) for _ in range(60)]
    mats = np.array([p["materials"] for p in people])  # (60, 9)
    luma = np.array([p["colours"] @ [0.299, 0.587, 0.114] for p in people])  # (60, 9)
    # Skin is always the warmest part, whatever the clothes' colours.
    assert (mats[:, 1:2] > mats[:, 2:]).all()
    # A garment's visible brightness follows its infrared material (the cross-modal cue), but
    # not exactly: a tenth of it is the garment's own random colour.
    for part in (3, 5):
        r = np.corrcoef(mats[:, part], luma[:, part])[0, 1]
        assert 0.8 < r < 0.9999
    # Garments stay coloured, but any one channel (what the channel-exchange view keeps) is
    # close to the luminance: at full saturation the mean gap would be about 0.19.
    garments = np.array([p["colours"][part] for p in people for part in (3, 4, 5, 6)])
    gap = np.abs(garments - (garments @ [0.299, 0.587, 0.114])[:, None])
    assert 0.04 < gap.mean() < 0.1 and (gap.max(1) > 0.05).mean() > 0.7
    # Same identity and pose, two renderings: figure pixels differ from a grey conversion.
    light = np.float32([1.0, 1.0, 1.0])
    vis = synthetic._render(people[0], np.random.default_rng(5), (128, 64), light, False)
    ir = synthetic._render(people[0], np.random.default_rng(5), (128, 64), light[:1], True)
    body = synthetic._figure(people[0], np.random.default_rng(5), 128, 64)[0] > 0
    grey = vis.astype(float) @ [0.299, 0.587, 0.114]
    # related (the cross-modal cue) but not a grey conversion: skin, hair and bags differ
    assert np.abs(grey[body] - ir[..., 0][body]).mean() > 10


def test_marker_skips_or_regenerates(tmp_path):
    root = tmp_path / "syn"
    synthetic.ensure_synthetic(root, "sysu", seed=1, **SMALL_SYSU)
    marker = json.loads((root / synthetic.MARKER).read_text())
    assert marker["complete"] is True and marker["seed"] == 1 and marker["size"] == [32, 16]
    sentinel = root / "cam1" / "sentinel.txt"
    sentinel.write_text("kept while parameters match")
    synthetic.ensure_synthetic(root, "sysu", seed=1, **SMALL_SYSU)
    assert sentinel.exists()
    synthetic.ensure_synthetic(root, "sysu", seed=2, **SMALL_SYSU)  # new seed: rebuilt
    assert not sentinel.exists()
    assert json.loads((root / synthetic.MARKER).read_text())["seed"] == 2
    sentinel.write_text("x")
    # An interrupted run leaves an incomplete marker: regenerated next time.
    marker = json.loads((root / synthetic.MARKER).read_text())
    (root / synthetic.MARKER).write_text(json.dumps({**marker, "complete": False}))
    synthetic.ensure_synthetic(root, "sysu", seed=2, **SMALL_SYSU)
    assert not sentinel.exists()
    # Switching layout in the same folder removes the SYSU folders.
    synthetic.ensure_synthetic(root, "regdb", **SMALL_REGDB)
    assert not (root / "cam1").exists() and len(regdb.listed_paths(root)) == 32


def test_refuses_to_touch_foreign_data(tmp_path):
    (tmp_path / "cam1" / "0001").mkdir(parents=True)
    (tmp_path / "cam1" / "0001" / "real.jpg").write_bytes(b"not ours")
    with pytest.raises(DatasetError, match=r"holds cam1 but no \.tskd_synthetic\.json") as err:
        synthetic.ensure_synthetic(tmp_path, "sysu", **SMALL_SYSU)
    assert str(tmp_path) in str(err.value)
    assert (tmp_path / "cam1" / "0001" / "real.jpg").read_bytes() == b"not ours"


def test_bad_parameters(tmp_path):
    with pytest.raises(DatasetError, match="Unknown synthetic layout 'market'"):
        synthetic.ensure_synthetic(tmp_path, "market")
    with pytest.raises(DatasetError, match="bad parameter"):
        synthetic.ensure_synthetic(tmp_path, "sysu", num_ids=4)
    with pytest.raises(DatasetError, match="num_test must be >= 1, got 0"):
        synthetic.make_sysu(tmp_path, num_test=0)
    with pytest.raises(DatasetError, match="num_ids must be even"):
        synthetic.make_regdb(tmp_path, num_ids=7)
    assert not any(tmp_path.iterdir())  # nothing written for bad parameters
