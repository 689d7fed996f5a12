"""LLCM layout: query/gallery of every setting against an independent reference, training lists,
and the errors of bad layouts."""

import io
import os
import random

import pytest
from PIL import Image

from tskd.core.errors import DatasetError
from tskd.data import llcm

TEST = [31, 2, 40, 9, 1064]
# (modality, pid) -> {cam: number of images}. Id 9 has no infrared image at all; id 40 has one
# visible camera only; the visible side uses cam3, which the infrared side never has.
TEST_LAYOUT = {
    ("test_vis", 31): {1: 2, 3: 4, 9: 1},
    ("test_nir", 31): {1: 3, 4: 2, 9: 5},
    ("test_vis", 2): {2: 12, 5: 3, 6: 1, 7: 2, 8: 2},
    ("test_nir", 2): {2: 4, 5: 1, 8: 6},
    ("test_vis", 40): {4: 6},
    ("test_nir", 40): {1: 2, 2: 2, 6: 3, 7: 1},
    ("test_vis", 9): {1: 1, 3: 2},
    ("test_vis", 1064): {3: 3, 9: 2},
    ("test_nir", 1064): {8: 2, 9: 9},
}
# Training: (folder, pid) -> (label, {cam: n}); raw ids in folders, labels in the idx files.
TRAIN_LAYOUT = {
    ("vis", 5): (0, {2: 2, 3: 1}), ("nir", 5): (0, {2: 1}),
    ("vis", 17): (1, {1: 1}), ("nir", 17): (1, {4: 2, 6: 1}),
    ("vis", 20): (2, {9: 3}), ("nir", 20): (2, {9: 1}),
}


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 8), (20, 140, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def _names(n: int) -> list[str]:
    """Unsorted, non-contiguous names (listing order must not matter)."""
    return [f"{(5 * k) % 23:04d}.jpg" for k in range(n, 0, -1)]


def make_tree(root, test=TEST):
    data = _jpeg()
    for (folder, pid), cams in TEST_LAYOUT.items():
        for cam, n in cams.items():
            d = os.path.join(root, folder, f"cam{cam}", f"{pid:04d}")
            os.makedirs(d)
            for name in _names(n):
                with open(os.path.join(d, name), "wb") as fh:
                    fh.write(data)
    os.makedirs(os.path.join(root, "idx"))
    lines = {"vis": [], "nir": []}
    for (folder, pid), (label, cams) in TRAIN_LAYOUT.items():
        for cam, n in cams.items():
            rel = f"{folder}/cam{cam}/{pid:04d}"
            os.makedirs(os.path.join(root, rel))
            for name in _names(n):
                with open(os.path.join(root, rel, name), "wb") as fh:
                    fh.write(data)
                lines[folder].append(f"{rel}/{name} {label}")
    for folder, name in (("vis", "train_vis.txt"), ("nir", "train_nir.txt")):
        _write(root, name, "\n".join(lines[folder]) + "\n")
    _write(root, "test_id.txt", ",".join(map(str, test)) + "\n")
    return str(root)


def _write(root, name, text):
    with open(os.path.join(root, "idx", name), "w") as fh:
        fh.write(text)


@pytest.fixture
def root(tmp_path):
    # "cam" and digits inside the root: camera and id must come from path parts.
    return make_tree(tmp_path / "cam7" / "0042" / "LLCM-cam3")


# ------------------------------------------------------------------ independent reference
# Written from the protocol text: ids as %04d strings, os.listdir, the global random module.
VIS = [f"test_vis/cam{c}" for c in range(1, 10)]
NIR = [f"test_nir/cam{c}" for c in (1, 2, 4, 5, 6, 7, 8, 9)]


def _ref_ids(root):
    with open(os.path.join(root, "idx", "test_id.txt")) as fh:
        return [f"{int(y):04d}" for y in fh.read().splitlines()[0].split(",")]


def _entry(path, pid, cam_dir):
    return (path, int(pid), int(cam_dir.rsplit("cam", 1)[1]))


def ref_all(root, cams):
    out = []
    for pid in sorted(_ref_ids(root)):
        for cam in cams:
            d = os.path.join(root, cam, pid)
            if os.path.isdir(d):
                out += [_entry(f, pid, cam) for f in sorted(d + "/" + n for n in os.listdir(d))]
    return [(os.path.normpath(p), i, c) for p, i, c in out]


def ref_sampled(root, cams, trial):
    state = random.getstate()
    random.seed(trial)
    out = []
    for pid in sorted(_ref_ids(root)):
        for cam in cams:
            d = os.path.join(root, cam, pid)
            if os.path.isdir(d):
                files = sorted(d + "/" + n for n in os.listdir(d))
                out.append(_entry(random.choice(files), pid, cam))
    random.setstate(state)
    return [(os.path.normpath(p), i, c) for p, i, c in out]


def _norm(records):
    return [(os.path.normpath(p), i, c) for p, i, c in records]


@pytest.mark.parametrize("trial", [0, 1, 4, 9])
def test_settings_match_the_reference(root, trial):
    # IR->VIS: all infrared queries, sampled visible gallery.
    assert _norm(llcm.query_set(root, "infrared2visible", trial)) == ref_all(root, NIR)
    assert _norm(llcm.gallery_set(root, "infrared2visible", trial)) == ref_sampled(root, VIS, trial)
    # VIS->IR as DEEN computes it: sampled infrared rows are the queries, all visible the gallery.
    assert _norm(llcm.query_set(root, "visible2infrared", trial)) == ref_sampled(root, NIR, trial)
    assert _norm(llcm.gallery_set(root, "visible2infrared", trial)) == ref_all(root, VIS)
    # The literal reading swaps the roles.
    literal = "visible2infrared_literal"
    assert _norm(llcm.query_set(root, literal, trial)) == ref_all(root, VIS)
    assert _norm(llcm.gallery_set(root, literal, trial)) == ref_sampled(root, NIR, trial)


def test_sizes_order_and_trials(root):
    folders = {m: sum(1 for (f, _), cams in TEST_LAYOUT.items() if f == m for _ in cams)
               for m in ("test_vis", "test_nir")}
    images = {m: sum(n for (f, _), cams in TEST_LAYOUT.items() if f == m for n in cams.values())
              for m in ("test_vis", "test_nir")}
    assert len(llcm.sampled_images(root, "visible", 0)) == folders["test_vis"] == 13
    assert len(llcm.sampled_images(root, "infrared", 3)) == folders["test_nir"] == 12
    assert len(llcm.all_test_images(root, "visible")) == images["test_vis"]
    infrared = llcm.all_test_images(root, "infrared")
    assert len(infrared) == images["test_nir"]
    assert 9 not in {r[1] for r in infrared} and 3 not in {r[2] for r in infrared}
    order = [(r[1], r[2]) for r in infrared]
    assert order == sorted(order)
    draws = {tuple(llcm.gallery_set(root, "infrared2visible", t)) for t in llcm.TRIALS}
    assert len(draws) > 1
    # every draw comes from the full list (one cache serves all trials)
    for t in llcm.TRIALS:
        assert set(llcm.query_set(root, "visible2infrared", t)) <= set(infrared)


def test_draws_leave_the_global_random_state_alone(root):
    # Its own stream per call: the caller's random module is neither read nor advanced, so
    # a training seed cannot change the galleries and drawing cannot change training.
    random.seed(123)
    expected = random.random()
    random.seed(123)
    first = llcm.gallery_set(root, "infrared2visible", 5)
    assert random.random() == expected
    random.seed(999)
    assert llcm.gallery_set(root, "infrared2visible", 5) == first


def test_train_set(root):
    visible, infrared = llcm.train_set(root)
    assert len(visible) == 2 + 1 + 1 + 3 and len(infrared) == 1 + 2 + 1 + 1
    assert [r[1] for r in visible] == [0, 0, 0, 1, 2, 2, 2]
    assert {r[1] for r in infrared} == {0, 1, 2}
    assert [r[2] for r in infrared] == [2, 4, 4, 6, 9]  # from the cam<k> folder, not the root
    for path, _, _ in visible + infrared:
        assert os.path.isfile(path) and path.startswith(root)
    with open(os.path.join(root, "idx", "train_vis.txt")) as fh:
        first = fh.readline().split()[0]
    assert visible[0][0] == os.path.join(root, first)  # file order kept


def _rewrite(root, name, edit):
    path = os.path.join(root, "idx", name)
    with open(path) as fh:
        lines = fh.read().splitlines()
    with open(path, "w") as fh:
        fh.write("\n".join(edit(lines)) + "\n")


@pytest.mark.parametrize("edit, match", [
    (lambda ls: ls + ["vis/cam2/0005/missing.jpg 0"], r"line 8 lists .*missing\.jpg"),
    (lambda ls: ls + [ls[0]], r"line 8 repeats 'vis/cam2/0005/\d+\.jpg' \(first on line 1\)"),
    (lambda ls: ls[:3] + ["vis/cam2/0005/0005.jpg"] + ls[3:], r"line 4: .* is malformed"),
    (lambda ls: ls[:3] + ["vis/x.jpg -1"] + ls[3:], r"line 4: .* is malformed"),
    (lambda ls: ["/abs/0001.jpg 0"] + ls, r"line 1: '/abs/0001\.jpg' must be a path relative"),
    (lambda ls: ["../x/0001.jpg 0"] + ls, r"line 1: '\.\./x/0001\.jpg' must be a path relative"),
    (lambda ls: [f"{p} {int(lab) + 1}" for p, lab in (x.split() for x in ls)],
     r"train_vis\.txt has labels 1\.\.3 .*missing \[0\]"),
    (lambda ls: [], r"train_vis\.txt lists no image"),
])
def test_bad_training_lists(root, edit, match):
    _rewrite(root, "train_vis.txt", edit)
    with pytest.raises(DatasetError, match=match) as err:
        llcm.train_set(root)
    assert "train_vis.txt" in str(err.value)


def test_training_modalities_must_agree(root):
    _rewrite(root, "train_nir.txt", lambda ls: [x for x in ls if not x.endswith(" 2")])
    with pytest.raises(DatasetError, match=r"only visible: \[2\], only infrared: \[\]"):
        llcm.train_set(root)


def test_image_in_both_training_lists(root):
    with open(os.path.join(root, "idx", "train_vis.txt")) as fh:
        first = fh.readline()
    _rewrite(root, "train_nir.txt", lambda ls: ls + [first.split()[0] + " 0"])
    with pytest.raises(DatasetError, match="listed in both"):
        llcm.train_set(root)


def test_test_ids_every_line_and_errors(root, caplog):
    _write(root, "test_id.txt", "31,2\n40,9,1064,\n")
    with caplog.at_level("WARNING"):
        assert llcm.read_test_ids(root) == [31, 2, 40, 9, 1064]
    assert "reads only the" in caplog.text
    _write(root, "test_id.txt", "31,2,x\n")
    with pytest.raises(DatasetError, match=r"line 1: token 'x' is not a non-negative integer"):
        llcm.read_test_ids(root)
    _write(root, "test_id.txt", "31,2\n2\n")
    with pytest.raises(DatasetError, match=r"repeats id\(s\) \[2\]"):
        llcm.read_test_ids(root)
    _write(root, "test_id.txt", "\n")
    with pytest.raises(DatasetError, match="lists no id"):
        llcm.query_set(root, "infrared2visible")
    os.remove(os.path.join(root, "idx", "test_id.txt"))
    with pytest.raises(DatasetError, match=r"test_id\.txt is missing"):
        llcm.gallery_set(root, "infrared2visible")


def test_bad_roots_settings_and_trials(root, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        llcm.query_set(tmp_path / "nowhere", "infrared2visible")
    os.rename(os.path.join(root, "test_nir"), os.path.join(root, "elsewhere"))
    with pytest.raises(DatasetError, match="lacks the folder"):
        llcm.query_set(root, "infrared2visible")
    os.rename(os.path.join(root, "elsewhere"), os.path.join(root, "test_nir"))
    with pytest.raises(DatasetError, match=r"Unknown LLCM setting 'vis2ir'.*visible2infrared_lit"):
        llcm.query_set(root, "vis2ir")
    for bad in ("0", -1, 1.0, True):
        with pytest.raises(DatasetError, match="must be a non-negative integer"):
            llcm.gallery_set(root, "infrared2visible", bad)
    os.makedirs(os.path.join(root, "test_vis", "cam5", "0031"))  # empty id folder
    with pytest.raises(DatasetError, match=r"cam5.0031 exists but holds no image"):
        llcm.gallery_set(root, "infrared2visible", 0)
    _write(root, "test_id.txt", "777\n")  # no image anywhere
    with pytest.raises(DatasetError, match="no test id of idx/test_id.txt has an image"):
        llcm.query_set(root, "visible2infrared_literal")
