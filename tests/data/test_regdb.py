"""RegDB layout: idx files per trial, labels, directions, the image list and every bad input."""

import os

import numpy as np
import pytest

from tskd.core.errors import DatasetError
from tskd.data import regdb

IDS = range(1, 9)  # 8 identities, 3 images per modality
SPLITS = {1: [2, 5, 7, 8], 2: [1, 3, 4, 6]}  # training ids of the trials written below


def _rel(folder: str, pid: int, k: int) -> str:
    return f"{folder}/{pid}/{folder[0].lower()}_{pid:05d}_{k}.bmp"


def _write(root, name, lines):
    with open(os.path.join(root, "idx", name), "w") as fh:
        fh.write("\n".join(lines) + "\n")


def make_tree(root):
    for folder in ("Visible", "Thermal"):
        for pid in IDS:
            os.makedirs(os.path.join(root, folder, str(pid)))
            for k in range(3):
                open(os.path.join(root, _rel(folder, pid, k)), "wb").close()
    os.makedirs(os.path.join(root, "idx"))
    for trial, train in SPLITS.items():
        test = [p for p in IDS if p not in train]
        for modality, folder in (("visible", "Visible"), ("thermal", "Thermal")):
            _write(root, f"train_{modality}_{trial}.txt",
                   [f"{_rel(folder, p, k)} {lab}" for lab, p in enumerate(train) for k in range(3)])
            _write(root, f"test_{modality}_{trial}.txt",
                   [f"{_rel(folder, p, k)} {p}" for p in test for k in range(3)])
    return str(root)


@pytest.fixture
def root(tmp_path):
    return make_tree(tmp_path / "RegDB")


def test_train_set_per_trial(root):
    for trial, train in SPLITS.items():
        visible, thermal = regdb.train_set(root, trial)
        for records, folder, cam in ((visible, "Visible", 1), (thermal, "Thermal", 2)):
            assert records == [
                (os.path.join(root, _rel(folder, p, k)), label, cam)
                for label, p in enumerate(train) for k in range(3)
            ]
    # numpy integers (e.g. from a config sweep) are valid trials too
    assert regdb.train_set(root, np.int64(1)) == regdb.train_set(root, 1)


def test_test_set_and_directions(root):
    visible, thermal = regdb.test_set(root, 1)
    assert [r[1] for r in visible] == [1, 1, 1, 3, 3, 3, 4, 4, 4, 6, 6, 6]
    assert {r[2] for r in visible} == {regdb.VISIBLE_CAM} and {r[2] for r in thermal} == {2}
    assert all("/Thermal/" in r[0] for r in thermal)
    train_ids = {int(r[0].split(os.sep)[-2]) for r in regdb.train_set(root, 1)[0]}
    assert train_ids.isdisjoint({r[1] for r in visible})
    assert regdb.DIRECTIONS == ("visible2thermal", "thermal2visible")


def test_listed_paths_is_the_union_of_idx_files(root):
    paths = regdb.listed_paths(root)
    every = sorted(os.path.join(root, _rel(f, p, k))
                   for f in ("Visible", "Thermal") for p in IDS for k in range(3))
    assert paths == every
    os.remove(os.path.join(root, "idx", "train_visible_2.txt"))
    os.remove(os.path.join(root, "idx", "test_visible_2.txt"))
    os.remove(os.path.join(root, "idx", "test_visible_1.txt"))
    # visible images now come only from train_visible_1 (ids 2, 5, 7, 8)
    assert len(regdb.listed_paths(root)) == 24 + 12


def test_blank_lines_ignored(root):
    _write(root, "test_thermal_1.txt", ["", _rel("Thermal", 3, 0) + " 3", "   ", ""])
    assert regdb.read_idx(root, "test", "thermal", 1) == [
        (os.path.join(root, _rel("Thermal", 3, 0)), 3)]


@pytest.mark.parametrize("trial", [0, 11, -1, "3", 2.0, True])
def test_trial_out_of_range(root, trial):
    for call in (lambda: regdb.read_idx(root, "train", "visible", trial),
                 lambda: regdb.train_set(root, trial), lambda: regdb.test_set(root, trial)):
        with pytest.raises(DatasetError, match="valid trials are 1..10") as err:
            call()
        assert repr(trial) in str(err.value)


def test_bad_split_or_modality(root):
    with pytest.raises(DatasetError, match="split 'val' / modality 'visible'"):
        regdb.read_idx(root, "val", "visible", 1)
    with pytest.raises(DatasetError, match="modality 'infrared'"):
        regdb.read_idx(root, "test", "infrared", 1)


def test_missing_root_and_folders(tmp_path, root):
    with pytest.raises(DatasetError, match="does not exist.*dataset.root") as err:
        regdb.check_root(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    os.rename(os.path.join(root, "Thermal"), os.path.join(root, "thermal_images"))
    for call in (lambda: regdb.check_root(root), lambda: regdb.train_set(root, 1),
                 lambda: regdb.listed_paths(root)):
        with pytest.raises(DatasetError, match=r"lacks the folder\(s\) Thermal\."):
            call()


def test_missing_idx_file(root):
    file = os.path.join(root, "idx", "train_thermal_3.txt")
    with pytest.raises(DatasetError, match="is missing") as err:
        regdb.train_set(root, 3)
    assert os.path.join(root, "idx", "train_visible_3.txt") in str(err.value)
    with pytest.raises(DatasetError, match="is missing") as err:
        regdb.read_idx(root, "train", "thermal", 3)
    assert file in str(err.value)
    for name in os.listdir(os.path.join(root, "idx")):
        os.remove(os.path.join(root, "idx", name))
    with pytest.raises(DatasetError, match="has no idx/"):
        regdb.listed_paths(root)


@pytest.mark.parametrize("bad", [
    "Visible/2/v_00002_0.bmp",  # no label
    "Visible/2/v_00002_0.bmp x1",  # label not an integer
    "Visible/2/v_00002_0.bmp 1.5",
])
def test_malformed_line(root, bad):
    good = [f"{_rel('Visible', 2, k)} 0" for k in range(3)]
    _write(root, "train_visible_1.txt", [good[0], "", bad, good[1]])
    file = os.path.join(root, "idx", "train_visible_1.txt")
    with pytest.raises(DatasetError, match="line 3: .* is malformed") as err:
        regdb.train_set(root, 1)
    message = str(err.value)
    assert file in message and repr(bad) in message and "relative/path label" in message


def test_listed_image_missing(root):
    missing = os.path.join(root, _rel("Thermal", 5, 1))
    os.remove(missing)
    with pytest.raises(DatasetError, match="line 5 lists .* which does not exist") as err:
        regdb.train_set(root, 1)
    assert missing in str(err.value) and "train_thermal_1.txt" in str(err.value)
    with pytest.raises(DatasetError, match="does not exist"):
        regdb.listed_paths(root)


@pytest.mark.parametrize("labels, found", [([1, 2, 3, 4], "1..4"), ([0, 1, 3, 4], "0..4")])
def test_training_labels_must_be_contiguous_from_zero(root, labels, found):
    _write(root, "train_thermal_2.txt", [
        f"{_rel('Thermal', p, k)} {lab}" for lab, p in zip(labels, SPLITS[2]) for k in range(3)])
    with pytest.raises(DatasetError, match=f"has labels {found} \\(4 distinct\\)") as err:
        regdb.train_set(root, 2)
    assert os.path.join(root, "idx", "train_thermal_2.txt") in str(err.value)


def test_modalities_must_share_identities(root):
    # thermal test list of trial 1 drops identity 6 -> no match for visible queries of id 6
    _write(root, "test_thermal_1.txt", [f"{_rel('Thermal', p, 0)} {p}" for p in (1, 3, 4)])
    with pytest.raises(DatasetError, match=r"disagree on labels \(only visible: \[6\]"):
        regdb.test_set(root, 1)
    _write(root, "train_thermal_1.txt", [f"{_rel('Thermal', p, 0)} {i}"
                                         for i, p in enumerate(SPLITS[1][:3])])
    with pytest.raises(DatasetError, match=r"train_visible_1.txt and .*only visible: \[3\]"):
        regdb.train_set(root, 1)


def _train_lines(folder, trial=1):
    return [f"{_rel(folder, p, k)} {lab}" for lab, p in enumerate(SPLITS[trial]) for k in range(3)]


def test_byte_order_mark_is_accepted(root):
    lines = _train_lines("Visible")
    with open(os.path.join(root, "idx", "train_visible_1.txt"), "w", encoding="utf-8-sig") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "idx", "train_visible_1.txt"), "rb") as fh:
        assert fh.read(3) == b"\xef\xbb\xbf"  # the file really starts with a BOM
    visible, _ = regdb.train_set(root, 1)
    assert visible[0] == (os.path.join(root, _rel("Visible", 2, 0)), 0, regdb.VISIBLE_CAM)
    assert len(visible) == 12


@pytest.mark.parametrize("repeat", [
    "Visible/5/v_00005_1.bmp 1",  # the same line again
    "Visible/5/v_00005_1.bmp 3",  # the same image under another label
    "./Visible//5/v_00005_1.bmp 1",  # the same image spelled differently
])
def test_repeated_image_is_refused(root, repeat):
    lines = _train_lines("Visible")
    _write(root, "train_visible_1.txt", lines[:6] + [repeat] + lines[6:])
    with pytest.raises(DatasetError, match=r"line 7: .* repeats line 5; every image is listed "
                       "once") as err:
        regdb.train_set(root, 1)
    message = str(err.value)
    assert os.path.join(root, "idx", "train_visible_1.txt") in message
    assert repr(repeat.rsplit(maxsplit=1)[0]) in message and "Delete the repeated line" in message
    with pytest.raises(DatasetError, match="repeats line 5"):
        regdb.listed_paths(root)


def test_absolute_path_is_refused(root):
    # The absolute path names a real image: it used to be accepted.
    lines = _train_lines("Thermal")
    absolute = os.path.join(root, _rel("Thermal", 7, 0))
    lines[6] = f"{absolute} 2"
    _write(root, "train_thermal_1.txt", lines)
    with pytest.raises(DatasetError, match="line 7: path .* is absolute") as err:
        regdb.train_set(root, 1)
    assert repr(absolute) in str(err.value) and "relative to dataset.root" in str(err.value)
    assert os.path.join(root, "idx", "train_thermal_1.txt") in str(err.value)
    _write(root, "test_thermal_1.txt", ["C:\\RegDB\\Thermal\\1\\t_00001_0.bmp 1"])
    with pytest.raises(DatasetError, match="test_thermal_1.txt, line 1: path .* is absolute"):
        regdb.test_set(root, 1)


@pytest.mark.parametrize("path", [
    "../RegDB/Visible/2/v_00002_0.bmp",  # leaves the root (and comes back)
    "Visible/2/../../Visible/2/v_00002_0.bmp",  # stays inside, but '..' is never needed
])
def test_dotdot_path_is_refused(root, path):
    assert os.path.isfile(os.path.join(root, path))  # it names a real image
    lines = _train_lines("Visible")
    lines[0] = f"{path} 0"
    _write(root, "train_visible_1.txt", lines)
    with pytest.raises(DatasetError, match="line 1: path .* contains '..'") as err:
        regdb.train_set(root, 1)
    assert "relative to dataset.root" in str(err.value)


@pytest.mark.parametrize("modality, folder, wrong, message", [
    ("visible", "Visible", "Thermal/2/t_00002_1.bmp", "names a Thermal/ image, but"),
    ("thermal", "Thermal", "Visible/2/v_00002_1.bmp", "names a Visible/ image, but"),
    ("visible", "Visible", "Extra/2/v_00002_1.bmp", "is not under Visible/, but"),
])
def test_image_of_the_wrong_modality_is_refused(root, modality, folder, wrong, message):
    os.makedirs(os.path.join(root, "Extra", "2"))
    open(os.path.join(root, "Extra/2/v_00002_1.bmp"), "wb").close()
    assert os.path.isfile(os.path.join(root, wrong))  # the image exists: only its folder is wrong
    lines = _train_lines(folder)
    lines[1] = f"{wrong} 0"
    _write(root, f"train_{modality}_1.txt", lines)
    file = os.path.join(root, "idx", f"train_{modality}_1.txt")
    for call in (lambda: regdb.train_set(root, 1), lambda: regdb.listed_paths(root)):
        with pytest.raises(DatasetError, match=f"line 2: path '{wrong}' {message}") as err:
            call()
        assert file in str(err.value) and f"this is the {modality} list" in str(err.value)
        assert f"Point it at the {folder}/ image" in str(err.value)
