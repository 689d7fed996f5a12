"""Odd files in a dataset tree end in one message naming the file and the fix (issue 20, item
10): split files in another encoding, image names that are not UTF-8, symbolic link loops and
dangling links. Each tree is a small synthetic one, changed the way a careless copy would."""

from __future__ import annotations

import os
import shutil

import pytest

from tskd.core.errors import DatasetError
from tskd.data import llcm, regdb, sysu
from tskd.data.synthetic import make_llcm, make_regdb, make_sysu

SMALL = {"size": (16, 8)}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    return {
        "sysu": make_sysu(base / "sysu", num_train=3, num_val=1, num_test=3, images_per_cam=2,
                          **SMALL),
        "regdb": make_regdb(base / "regdb", num_ids=4, images_per_modality=2, **SMALL),
        "llcm": make_llcm(base / "llcm", num_train=2, num_test=3, images_per_cam=2, **SMALL),
    }


@pytest.fixture
def tree(trees, tmp_path):
    """A fresh copy of one synthetic tree per test: ``tree(name)``."""
    def copy(name):
        return shutil.copytree(trees[name], tmp_path / name, symlinks=True)
    return copy


READERS = {  # (dataset, list file, what reads it)
    "sysu-test": ("sysu", "exp/test_id.txt", sysu.query_set),
    "sysu-train": ("sysu", "exp/train_id.txt", sysu.train_set),
    "regdb": ("regdb", "idx/train_visible_1.txt", lambda root: regdb.train_set(root, 1)),
    "llcm-test": ("llcm", "idx/test_id.txt", llcm.read_test_ids),
    "llcm-train": ("llcm", "idx/train_vis.txt", llcm.train_set),
}


@pytest.mark.parametrize("case", sorted(READERS))
def test_utf16_list_is_refused_naming_file_and_fix(tree, case):
    name, rel, read = READERS[case]
    root = tree(name)
    file = root / rel
    file.write_bytes(file.read_text(encoding="utf-8").encode("utf-16"))  # Notepad's "Unicode"
    with pytest.raises(DatasetError) as err:
        read(str(root))
    msg = str(err.value)
    assert str(file) in msg and "UTF-16" in msg and "save it as UTF-8" in msg


@pytest.mark.parametrize("case", ["sysu-test", "regdb"])
def test_list_in_another_8_bit_encoding_names_the_line(tree, case):
    name, rel, read = READERS[case]
    root = tree(name)
    file = root / rel
    lines = file.read_bytes().splitlines(keepends=True)
    lines.insert(1, b"caf\xe9\n")  # Latin-1, not UTF-8
    file.write_bytes(b"".join(lines))
    with pytest.raises(DatasetError) as err:
        read(str(root))
    msg = str(err.value)
    assert f"{file}, line 2" in msg and "not UTF-8" in msg and "save it as UTF-8" in msg


def _a_query_folder(root):
    pid = sysu.read_ids(root, "test")[0]
    folder = next(root / f"cam{c}" / f"{pid:04d}" for c in (3, 6)
                  if (root / f"cam{c}" / f"{pid:04d}").is_dir())
    return folder


def test_non_utf8_image_name_is_refused_by_the_listing(tree):
    root = tree("sysu")
    folder = _a_query_folder(root)
    odd = os.fsencode(folder) + b"/caf\xe9.jpg"
    with open(odd, "wb") as fh:
        fh.write(next(folder.iterdir()).read_bytes())
    with pytest.raises(DatasetError) as err:
        sysu.query_set(str(root))
    assert repr(odd) in str(err.value) and "rename it" in str(err.value)


def test_symbolic_link_loops_are_refused(tree):
    root = tree("sysu")
    folder = _a_query_folder(root)
    os.symlink("b.jpg", folder / "a.jpg")
    os.symlink("a.jpg", folder / "b.jpg")
    with pytest.raises(DatasetError) as err:
        sysu.query_set(str(root))
    msg = str(err.value)
    assert str(folder / "a.jpg") in msg and "symbolic link loop" in msg
    assert "remove the link" in msg
    # a folder that is a link to itself
    for link in ("a.jpg", "b.jpg"):
        (folder / link).unlink()
    shutil.rmtree(folder)
    os.symlink(folder.name, folder)
    with pytest.raises(DatasetError, match="symbolic link loop") as err:
        sysu.query_set(str(root))
    assert str(folder) in str(err.value)


def test_dangling_symbolic_link_is_not_skipped(tree, tmp_path):
    root = tree("sysu")
    folder = _a_query_folder(root)
    target = tmp_path / "elsewhere" / "0001.jpg"  # e.g. a tree of links into a moved copy
    os.symlink(target, folder / "0099.jpg")
    with pytest.raises(DatasetError) as err:
        sysu.query_set(str(root))
    msg = str(err.value)
    assert str(folder / "0099.jpg") in msg and f"points to {target}, which does not exist" in msg
    assert "restore" in msg and "remove the link" in msg
