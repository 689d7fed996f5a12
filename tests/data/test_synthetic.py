"""Synthetic dataset: determinism, the real layouts' quirks, counts, speed, the marker logic and
concurrent runs."""

import json
import multiprocessing
import os
import time

import numpy as np
import pytest
from PIL import Image

from tskd.core.errors import DatasetError
from tskd.data import llcm, regdb, synthetic, sysu

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


SMALL_LLCM = dict(num_train=5, num_test=4, images_per_cam=2, size=(32, 16))


def test_llcm_layout_loads(tmp_path):
    root = synthetic.ensure_synthetic(tmp_path / "llcm", "llcm", seed=2, **SMALL_LLCM)
    visible, infrared = llcm.train_set(root)
    assert sorted({r[1] for r in visible}) == list(range(5)) == sorted({r[1] for r in infrared})
    assert {r[2] for r in infrared} <= set(llcm.INFRARED_CAMS)  # read from the cam<k> folders
    test = llcm.read_test_ids(root)
    assert len(test) == 4 and not (tmp_path / "llcm" / "test_nir" / "cam3").exists()
    for setting in llcm.SETTINGS:
        query, gallery = llcm.query_set(root, setting, 1), llcm.gallery_set(root, setting, 1)
        assert {r[1] for r in query} == {r[1] for r in gallery} == set(test)
    vis, nir = llcm.all_test_images(root, "visible"), llcm.all_test_images(root, "infrared")
    assert len(vis) % 2 == 0 and len(nir) % 2 == 0  # images_per_cam each
    assert len(llcm.sampled_images(root, "visible", 0)) == len(vis) // 2
    # Some id is seen by one camera number in both modalities: the camera rule has work to do.
    shared = {(r[1], r[2]) for r in vis} & {(r[1], r[2]) for r in nir}
    assert shared
    with open(tmp_path / "llcm" / "idx" / "train_nir.txt") as fh:
        assert fh.readline().startswith("train_nir/cam")
    # Same parameters again: nothing regenerated; another layout in the folder replaces it.
    stamp = os.stat(vis[0][0]).st_mtime_ns
    synthetic.ensure_synthetic(root, "llcm", seed=2, **SMALL_LLCM)
    assert os.stat(vis[0][0]).st_mtime_ns == stamp
    synthetic.ensure_synthetic(root, "regdb", **SMALL_REGDB)
    assert not (tmp_path / "llcm" / "test_vis").exists() and len(regdb.listed_paths(root)) == 32


# ------------------------------------------------------------------------- concurrency
def _worker(root, role, events, results):
    """One process asking for the synthetic LLCM tree (run under the spawn start method)."""
    import logging

    calls = []
    prepare = synthetic._prepare

    def counted_prepare(*args, **kw):  # generation starts here (and deletes old trees)
        calls.append(1)
        return prepare(*args, **kw)

    synthetic._prepare = counted_prepare
    if role == "first":  # pause inside generation, after the first image
        render = synthetic._render

        def paused_render(*args, **kw):
            if not events["started"].is_set():
                events["started"].set()
                events["release"].wait(120)
            return render(*args, **kw)

        synthetic._render = paused_render
    elif role == "second":  # report when it finds the lock held and starts waiting

        class Waiting(logging.Handler):
            def emit(self, record):
                if "waiting" in record.getMessage():
                    events["waiting"].set()

        synthetic.log.addHandler(Waiting())
        synthetic.log.setLevel(logging.INFO)
    else:  # "together": start with the others
        events["barrier"].wait(120)
    try:
        synthetic.ensure_synthetic(root, "llcm", seed=4, **SMALL_LLCM)
        results.put((role, len(calls), None))
    except Exception as err:  # reported to the test, which fails with it
        results.put((role, len(calls), repr(err)))


def _files_and_bytes(root):
    return {f: _bytes(root, f) for f in _files(root)
            if not f.startswith(".tskd_synthetic")}


@pytest.mark.e2e
def test_second_process_waits_for_the_first_instead_of_deleting_its_tree(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    events = {name: ctx.Event() for name in ("started", "release", "waiting")}
    results = ctx.Queue()
    root = str(tmp_path / "shared")
    first = ctx.Process(target=_worker, args=(root, "first", events, results))
    first.start()
    try:
        assert events["started"].wait(120), "the first process never started generating"
        second = ctx.Process(target=_worker, args=(root, "second", events, results))
        second.start()
        # The second finds the tree marked incomplete while the first is still writing: it must
        # wait on the lock (before the fix it deleted the first one's folders here).
        assert events["waiting"].wait(120), "the second process did not wait for the first"
    finally:
        events["release"].set()
    outcome = {}
    for _ in range(2):
        role, generated, error = results.get(timeout=300)
        outcome[role] = (generated, error)
    first.join(60)
    second.join(60)
    assert outcome == {"first": (1, None), "second": (0, None)}  # one generator, one user
    assert first.exitcode == 0 and second.exitcode == 0
    reference = synthetic.make_llcm(tmp_path / "alone", seed=4, **SMALL_LLCM)
    assert _files_and_bytes(root) == _files_and_bytes(reference)
    assert json.loads((tmp_path / "shared" / synthetic.MARKER).read_text())["complete"] is True


@pytest.mark.e2e
def test_processes_started_together_generate_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    events = {"barrier": ctx.Barrier(3)}
    results = ctx.Queue()
    root = str(tmp_path / "shared")
    procs = [ctx.Process(target=_worker, args=(root, "together", events, results))
             for _ in range(3)]
    for proc in procs:
        proc.start()
    outcome = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(60)
    assert [error for _, _, error in outcome] == [None] * 3
    assert sorted(generated for _, generated, _ in outcome) == [0, 0, 1]
    assert llcm.train_set(root)[0]  # a complete, readable tree
    reference = synthetic.make_llcm(tmp_path / "alone", seed=4, **SMALL_LLCM)
    assert _files_and_bytes(root) == _files_and_bytes(reference)


@pytest.mark.e2e
def test_a_dead_generator_leaves_no_lock_behind(tmp_path):
    # The lock is the OS's: a run killed mid-generation (incomplete marker) does not block the
    # next one, which rebuilds the tree.
    ctx = multiprocessing.get_context("spawn")
    events = {name: ctx.Event() for name in ("started", "release")}
    root, results = str(tmp_path / "shared"), ctx.Queue()  # kept alive until the child reads it
    first = ctx.Process(target=_worker, args=(root, "first", events, results))
    first.start()
    assert events["started"].wait(120)
    first.kill()
    first.join(60)
    assert json.loads((tmp_path / "shared" / synthetic.MARKER).read_text())["complete"] is False
    synthetic.ensure_synthetic(root, "llcm", seed=4, **SMALL_LLCM)
    reference = synthetic.make_llcm(tmp_path / "alone", seed=4, **SMALL_LLCM)
    assert _files_and_bytes(root) == _files_and_bytes(reference)
