"""SYSU-MM01 layout: query/gallery against an independent reference, training lists, errors."""

import io
import os
import random

import pytest
from PIL import Image

from tskd.core.errors import DatasetError
from tskd.data import sysu

TRAIN, VAL, TEST = [3, 12, 7], [25, 20], [31, 2, 40, 9, 15]
# pid -> {cam: number of images}. Validation ids have no cam1/cam2; some test ids lack cameras;
# id 9 has no indoor visible camera, id 2 has folders with more than 10 images (multi-shot).
LAYOUT = {
    3: {1: 2, 2: 1, 3: 2, 4: 1, 5: 1, 6: 1},
    7: {2: 3, 6: 2},
    12: {1: 1, 4: 2, 3: 1},
    20: {4: 2, 3: 1, 6: 1},
    25: {5: 1, 6: 3},
    2: {1: 12, 2: 4, 3: 3, 4: 13, 5: 2, 6: 2},
    9: {4: 5, 5: 3, 3: 2},
    15: {1: 6, 5: 1, 6: 4},
    31: {1: 1, 2: 7, 4: 4, 3: 5, 6: 1},
    40: {2: 2, 4: 1, 5: 6, 6: 3},
}


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 8), (120, 30, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def _names(n: int) -> list[str]:
    """Unsorted, non-contiguous file names (listing order must not matter)."""
    return [f"{(7 * k) % 31:04d}.jpg" for k in range(n, 0, -1)]


def make_tree(root, layout=LAYOUT, train=TRAIN, val=VAL, test=TEST):
    data = _jpeg()
    for cam in range(1, 7):
        os.makedirs(os.path.join(root, f"cam{cam}"), exist_ok=True)
    for pid, cams in layout.items():
        for cam, n in cams.items():
            folder = os.path.join(root, f"cam{cam}", f"{pid:04d}")
            os.makedirs(folder)
            for name in _names(n):
                with open(os.path.join(folder, name), "wb") as fh:
                    fh.write(data)
    os.makedirs(os.path.join(root, "exp"))
    for split, ids in (("train", train), ("val", val), ("test", test)):
        with open(os.path.join(root, "exp", f"{split}_id.txt"), "w") as fh:
            fh.write(",".join(map(str, ids)) + "\n")
    return str(root)


@pytest.fixture
def root(tmp_path):
    # Digits and "cam" inside the root itself: parsing must use path parts, not offsets.
    return make_tree(tmp_path / "cam3" / "0042" / "SYSU-cam1-2017")


def _ref_ids(root):
    with open(os.path.join(root, "exp", "test_id.txt")) as fh:
        return [f"{int(y):04d}" for y in fh.read().splitlines()[0].split(",")]


def ref_query(root):
    """Straight transcription of docs/protocol.md (not the library's code)."""
    out = []
    for pid in sorted(_ref_ids(root)):
        for cam in ("cam3", "cam6"):
            d = os.path.join(root, cam, pid)
            if os.path.isdir(d):
                files = sorted(os.path.join(d, f) for f in os.listdir(d))
                out += [(f, int(pid), int(cam[3])) for f in files]
    return out


def ref_gallery(root, mode, trial, shots=1):
    state = random.getstate()
    random.seed(trial)
    cams = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    out = []
    for pid in sorted(_ref_ids(root)):
        for cam in cams:
            d = os.path.join(root, cam, pid)
            if os.path.isdir(d):
                files = sorted(os.path.join(d, f) for f in os.listdir(d))
                picked = [random.choice(files)] if shots == 1 else random.sample(
                    files, min(shots, len(files)))
                out += [(f, int(pid), int(cam[3])) for f in picked]
    random.setstate(state)
    return out


def test_query_matches_reference(root):
    query = sysu.query_set(root)
    assert query == ref_query(root)
    expected = sum(n for pid in TEST for c, n in LAYOUT[pid].items() if c in (3, 6))
    assert len(query) == expected == 20
    assert [r[1] for r in query] == sorted(r[1] for r in query)


@pytest.mark.parametrize("mode", ["all", "indoor"])
@pytest.mark.parametrize("trial", [0, 1, 5, 9])
@pytest.mark.parametrize("shots", [1, 10])
def test_gallery_matches_reference(root, mode, trial, shots):
    assert sysu.gallery_set(root, mode, trial, shots) == ref_gallery(root, mode, trial, shots)


def test_gallery_sizes_and_trials_differ(root):
    # One image per existing (test id, camera) folder: all = 14 folders, indoor = 6.
    assert len(sysu.gallery_set(root, "all", 0)) == 14
    assert len(sysu.gallery_set(root, "indoor", 0)) == 6
    assert {c for _, _, c in sysu.gallery_set(root, "indoor", 3)} == {1, 2}
    draws = {tuple(sysu.gallery_set(root, "all", t)) for t in range(10)}
    assert len(draws) > 1
    multi = sysu.gallery_set(root, "all", 0, shots=10)
    # pid 2 cam1 has 12 images -> 10 drawn; cam2 has 4 -> all 4, without repeats.
    assert sum(1 for _, p, c in multi if (p, c) == (2, 1)) == 10
    assert sum(1 for _, p, c in multi if (p, c) == (2, 2)) == 4
    assert len(set(multi)) == len(multi)


def test_gallery_candidates_cover_every_trial(root):
    for mode in ("all", "indoor"):
        cands = sysu.gallery_candidates(root, mode)
        assert len(cands) == sum(
            n for p in TEST for c, n in LAYOUT[p].items() if c in sysu.GALLERY_CAMS[mode])
        assert cands == sorted(cands, key=lambda r: (r[1], sysu.GALLERY_CAMS[mode].index(r[2])))
        for t in range(10):
            assert set(sysu.gallery_set(root, mode, t, shots=10)) <= set(cands)


def test_train_set_order_labels_counts(root):
    visible, infrared = sysu.train_set(root)
    ids = sorted(TRAIN + VAL)
    assert sysu.train_pids(root) == ids == [3, 7, 12, 20, 25]
    for records, cams in ((visible, (1, 2, 4, 5)), (infrared, (3, 6))):
        expected = [
            (os.path.join(root, f"cam{c}", f"{pid:04d}", name), label, c)
            for label, pid in enumerate(ids)
            for c in cams if c in LAYOUT[pid]
            for name in sorted(_names(LAYOUT[pid][c]))
        ]
        assert records == expected
    assert len(visible) == 2 + 1 + 1 + 1 + 3 + 1 + 2 + 2 + 1 == 14
    assert len(infrared) == 3 + 2 + 1 + 2 + 3 == 11
    assert sorted({r[1] for r in visible}) == [0, 1, 2, 3, 4]


def test_only_image_files_listed(root):
    folder = os.path.join(root, "cam1", "0003")
    open(os.path.join(folder, "Thumbs.db"), "w").close()
    open(os.path.join(folder, "0099.PNG"), "w").close()
    names = [os.path.basename(p) for p in sysu.list_id_images(root, 1, 3)]
    assert names == sorted(_names(2) + ["0099.PNG"])
    assert sysu.list_id_images(root, 1, 7) == []


def test_training_id_without_a_modality(tmp_path):
    layout = {**LAYOUT, 7: {2: 3}}  # id 7 loses its infrared folder
    root = make_tree(tmp_path / "d", layout=layout)
    with pytest.raises(DatasetError, match=r"training id 7 has no infrared") as err:
        sysu.train_set(root)
    assert "train_id.txt" in str(err.value) and "val_id.txt" in str(err.value)


def test_missing_root_and_folders(tmp_path, root):
    with pytest.raises(DatasetError, match="dataset.root") as err:
        sysu.check_root(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    os.rename(os.path.join(root, "cam5"), os.path.join(root, "cam5_old"))
    os.rename(os.path.join(root, "exp"), os.path.join(root, "exp_old"))
    for call in (sysu.check_root, sysu.query_set, sysu.train_set, sysu.gallery_set):
        with pytest.raises(DatasetError, match="lacks the folder\\(s\\) cam5, exp") as err:
            call(root)
        assert "Expected layout" in str(err.value)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (None, "val_id.txt is missing"),
        ("", "val_id.txt is empty"),
        ("\n  \n\n", "val_id.txt is empty"),
        (",\n", "val_id.txt is empty"),
        ("20,x25\n", "token 'x25' is not a non-negative integer"),
        ("20,,25\n", "token '' is not"),
        ("20,-25\n", "token '-25'"),
        ("20,25,20\n", r"repeats id\(s\) \[20\] \(20 on lines 1, 1\)"),
        ("20\n25,x\n", "line 2: token 'x' is not"),
        ("20,\n25\n\n20\n", r"repeats id\(s\) \[20\] \(20 on lines 1, 4\); list each id once"),
    ],
)
def test_bad_split_file(root, content, pattern):
    file = os.path.join(root, "exp", "val_id.txt")
    os.remove(file)
    if content is not None:
        with open(file, "w") as fh:
            fh.write(content)
    for call in (lambda: sysu.read_ids(root, "val"), lambda: sysu.train_set(root)):
        with pytest.raises(DatasetError, match=pattern) as err:
            call()
        assert file in str(err.value)
    if content and "x25" in content:
        assert "line 1" in str(err.value) and "'20,x25'" in str(err.value)


def _write_ids(root, split, text, encoding="utf-8"):
    with open(os.path.join(root, "exp", f"{split}_id.txt"), "w", encoding=encoding) as fh:
        fh.write(text)


def test_read_ids_reads_every_line_with_any_separator(root):
    _write_ids(root, "val", " 25, 20,\n\n 41 42\t43\n,44,\n45")
    assert sysu.read_ids(root, "val") == [25, 20, 41, 42, 43, 44, 45]
    # A second line that is not ids is an error now, not silently skipped.
    _write_ids(root, "val", "25,20\nignored second line\n")
    with pytest.raises(DatasetError, match="line 2: token 'ignored' is not") as err:
        sysu.read_ids(root, "val")
    assert "separated by commas, spaces or line breaks" in str(err.value)
    with pytest.raises(DatasetError, match="valid splits: train, val, test"):
        sysu.read_ids(root, "query")


def test_wrapped_id_lists_train_on_every_id(tmp_path, root):
    """The bug: a list wrapped over lines used to train on its first line only."""
    wrapped = make_tree(tmp_path / "wrapped")
    _write_ids(wrapped, "train", "3,\n12\n\n7\n")
    _write_ids(wrapped, "test", "31 2\n40\n9, 15\n")
    assert sysu.train_pids(wrapped) == [3, 7, 12, 20, 25]
    visible, infrared = sysu.train_set(wrapped)
    ref_visible, ref_infrared = sysu.train_set(root)
    strip = len(root)
    assert [(p[len(wrapped):], lab, c) for p, lab, c in visible] == [
        (p[strip:], lab, c) for p, lab, c in ref_visible]
    assert len(infrared) == len(ref_infrared) == 11
    assert {pid for _, pid, _ in sysu.query_set(wrapped)} == set(TEST)
    assert len(sysu.gallery_set(wrapped, "all", 0)) == 14


def test_byte_order_mark_is_accepted(root):
    _write_ids(root, "train", "3,12,7\n", encoding="utf-8-sig")
    _write_ids(root, "test", "\ufeff31,2,40,9,15")
    with open(os.path.join(root, "exp", "train_id.txt"), "rb") as fh:
        assert fh.read(3) == b"\xef\xbb\xbf"  # the file really starts with a BOM
    assert sysu.read_ids(root, "train") == [3, 12, 7]
    assert sysu.read_ids(root, "test") == [31, 2, 40, 9, 15]
    assert sysu.train_pids(root) == [3, 7, 12, 20, 25]


@pytest.mark.parametrize("split, ids, number", [
    ("train", "3,12\n7,40\n", 2),  # 40 is a test id
    ("val", "25,\n20\n40\n", 3),
])
def test_training_and_test_ids_must_be_disjoint(root, split, ids, number):
    _write_ids(root, split, ids)
    file = os.path.join(root, "exp", f"{split}_id.txt")
    test_file = os.path.join(root, "exp", "test_id.txt")
    for call in (sysu.train_pids, sysu.train_set, sysu.query_set, sysu.gallery_set,
                 sysu.gallery_candidates, sysu.split_ids):
        with pytest.raises(DatasetError, match="1 id\\(s\\) listed both for training and for "
                           "testing") as err:
            call(root)
        message = str(err.value)
        assert f"id 40: {file} line {number} and {test_file} line 1" in message
        assert "must be disjoint" in message and "remove each id" in message


def test_split_ids_reports_every_clash(root):
    _write_ids(root, "val", "31,2,40,9,15,25,20")  # the whole test list again
    with pytest.raises(DatasetError, match="5 id\\(s\\) listed both") as err:
        sysu.split_ids(root)
    assert "id 31: " in str(err.value) and "id 15: " in str(err.value)
    _write_ids(root, "val", "25,20")
    assert sysu.split_ids(root) == ([3, 7, 12, 20, 25], [2, 9, 15, 31, 40])


def test_empty_id_folder(root):
    folder = os.path.join(root, "cam4", "0015")
    os.makedirs(folder)
    for call in (lambda: sysu.list_id_images(root, 4, 15), lambda: sysu.gallery_set(root)):
        with pytest.raises(DatasetError, match="holds no image") as err:
            call()
        assert folder in str(err.value) and "Remove the empty folder" in str(err.value)


def test_bad_mode_and_shots(root):
    for call in (lambda: sysu.gallery_set(root, "outdoor"),
                 lambda: sysu.gallery_candidates(root, "outdoor")):
        with pytest.raises(DatasetError, match="'outdoor'; valid modes: all, indoor"):
            call()
    with pytest.raises(DatasetError, match="shots must be >= 1, got 0"):
        sysu.gallery_set(root, shots=0)


def test_no_test_images_is_an_error(tmp_path):
    root = make_tree(tmp_path / "d", test=[77])
    with pytest.raises(DatasetError, match="no test id .* cam3/cam6"):
        sysu.query_set(root)
    with pytest.raises(DatasetError, match=r"no test id has an image in cams \(1, 2\)"):
        sysu.gallery_set(root, "indoor")
