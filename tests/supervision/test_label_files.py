"""DART's noise-file format (round trip, arrays as DART writes them, every refusal) and the
split / pseudo-label arrays of weak supervision."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tskd.core.errors import DatasetError, InputError
from tskd.supervision.label_files import (
    noise_file_paths,
    read_noise_files,
    read_split_files,
    write_noise_files,
    write_pseudo_label_files,
    write_split_files,
)
from tskd.supervision.noise import NoiseDraw, draw_noise
from tskd.supervision.split import draw_split

VIS = np.repeat(np.arange(6), [3, 4, 2, 5, 3, 3]).astype(np.int64)  # 20 rows
IR = np.repeat(np.arange(6), [2, 2, 3, 2, 2, 4]).astype(np.int64)   # 15 rows
DART_SUFFIXES = ["rgb", "rgb_noiseIdx", "rgb_cleanIdx", "rgb_true",
                 "ir", "ir_noiseIdx", "ir_cleanIdx", "ir_true"]


def _dart_style_files(prefix: str, vis: list, ir: list, rate: float, seed: int) -> dict:
    """Arrays made and saved the way DART's data_loader.py does: Python ``random``, lists, the
    clean rows from a set difference, ``np.save`` of lists; returns what was saved."""
    random.seed(seed)
    saved = {}
    for tag, true in (("rgb", list(vis)), ("ir", list(ir))):
        ids = list(true)
        unique = np.unique(ids)
        noise_idx = random.sample(range(len(ids)), int(np.ceil(rate * len(ids))))
        noise_idx.sort()
        clean_idx = list(set(range(len(ids))).difference(set(noise_idx)))
        for i in noise_idx:
            new = random.choice(unique)
            while new == true[i]:
                new = random.choice(unique)
            ids[i] = new
        for suffix, arr in (("", ids), ("_noiseIdx", noise_idx), ("_cleanIdx", clean_idx),
                            ("_true", true)):
            np.save(f"{prefix}_{tag}{suffix}.npy", np.array(arr))
            saved[tag + suffix] = np.array(arr)
    return saved


def test_round_trip_writes_darts_eight_names_and_reads_back_the_same_draw(tmp_path):
    draw = draw_noise(VIS, IR, 0.5, 4, every_identity_survives=True)
    paths = write_noise_files(draw, VIS, IR, tmp_path / "0.5_sym")
    assert [p.name for p in paths] == [f"0.5_sym_{s}.npy" for s in DART_SUFFIXES]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    stored = {s: np.load(tmp_path / f"0.5_sym_{s}.npy") for s in DART_SUFFIXES}
    assert all(a.dtype == np.int64 and a.ndim == 1 for a in stored.values())
    np.testing.assert_array_equal(stored["rgb"], draw.visible)
    np.testing.assert_array_equal(stored["ir_noiseIdx"], draw.infrared_noisy)
    np.testing.assert_array_equal(stored["rgb_cleanIdx"],
                                  np.setdiff1d(np.arange(VIS.size), draw.visible_noisy))
    np.testing.assert_array_equal(stored["ir_true"], IR)
    assert read_noise_files(tmp_path / "0.5_sym", VIS, IR).same_as(draw)


@pytest.mark.parametrize("prefix", ["0.2_sym", "0.2_sym_trial3"])
def test_reads_arrays_exactly_as_dart_writes_them(tmp_path, prefix):
    saved = _dart_style_files(str(tmp_path / prefix), VIS.tolist(), IR.tolist(), 0.2, 0)
    draw = read_noise_files(str(tmp_path / prefix), VIS, IR)  # a str prefix, as configs give it
    np.testing.assert_array_equal(draw.visible, saved["rgb"])
    np.testing.assert_array_equal(draw.infrared, saved["ir"])
    np.testing.assert_array_equal(draw.visible_noisy, saved["rgb_noiseIdx"])
    np.testing.assert_array_equal(draw.infrared_clean, np.sort(saved["ir_cleanIdx"]))
    assert draw.realised_rates() == {"visible": 4 / 20, "infrared": 3 / 15}


def test_tolerates_other_dtypes_unsorted_rows_and_one_based_labels(tmp_path):
    draw = draw_noise(VIS, IR, 0.3, 1, every_identity_survives=False)
    write_noise_files(draw, VIS, IR, tmp_path / "p")
    paths = noise_file_paths(tmp_path / "p")
    np.save(paths["visible", "labels"], (draw.visible + 1).astype(np.int32))
    np.save(paths["visible", "true"], (VIS + 1).astype(np.float64))
    np.save(paths["visible", "clean"], draw.visible_clean[::-1].astype(np.uint16))
    assert read_noise_files(tmp_path / "p", VIS, IR).same_as(draw)


def _written(tmp_path, rate=0.4):
    draw = draw_noise(VIS, IR, rate, 2, every_identity_survives=False)
    write_noise_files(draw, VIS, IR, tmp_path / "p")
    return draw, noise_file_paths(tmp_path / "p")


def _refused(tmp_path, match):
    with pytest.raises(DatasetError, match=match):
        read_noise_files(tmp_path / "p", VIS, IR)


def test_refuses_a_missing_file_naming_it_and_the_fix(tmp_path):
    _, paths = _written(tmp_path)
    paths["infrared", "clean"].unlink()
    _refused(tmp_path, r"missing for prefix .*p_ir_cleanIdx\.npy\. supervision\.noise_file must "
                       r"be the prefix P of DART's eight files")


def test_a_regdb_prefix_without_its_trial_gets_a_hint(tmp_path):
    _dart_style_files(str(tmp_path / "0.2_sym_trial1"), VIS.tolist(), IR.tolist(), 0.2, 0)
    with pytest.raises(DatasetError, match=r"found 0\.2_sym_trial1_rgb\.npy: give the prefix "
                                           r"with its trial, 0\.2_sym_trial<t>"):
        read_noise_files(tmp_path / "0.2_sym", VIS, IR)


@pytest.mark.parametrize(("key", "content", "match"), [
    (("visible", "labels"), b"not an npy file", r"cannot read .*p_rgb\.npy as a \.npy array"),
    (("visible", "noisy"), np.array([{"a": 1}], dtype=object),
     r"cannot read .*p_rgb_noiseIdx\.npy"),
    (("infrared", "true"), np.zeros((15, 1), dtype=np.int64), r"p_ir_true\.npy holds an array "
                                                              r"of shape \(15, 1\); expected 1-D"),
    (("visible", "noisy"), np.array([0.5, 2.0]), r"p_rgb_noiseIdx\.npy holds float64 values"),
    (("visible", "labels"), VIS[:-1], r"p_rgb\.npy holds 19 entries but the training list has "
                                      r"20 images: the file was made for another dataset"),
    (("infrared", "true"), np.concatenate([IR, [0]]), r"p_ir_true\.npy holds 16 entries"),
    (("visible", "true"), np.roll(VIS, 1), r"p_rgb_true\.npy: the stored true labels differ from "
                                           r"this dataset's training list \(row 0: 5 in the file, "
                                           r"0 in the list\)"),
])
def test_refuses_unreadable_or_foreign_arrays(tmp_path, key, content, match):
    _, paths = _written(tmp_path)
    if isinstance(content, bytes):
        paths[key].write_bytes(content)
    else:
        np.save(paths[key], content, allow_pickle=True)
    _refused(tmp_path, match)


def test_refuses_true_labels_of_another_list_of_the_same_length(tmp_path):
    _written(tmp_path)
    with pytest.raises(DatasetError, match="another dataset, trial or labelling"):
        read_noise_files(tmp_path / "p", np.sort(VIS)[::-1], IR)


def _edit_rows(paths, modality, noisy, clean):
    np.save(paths[modality, "noisy"], np.asarray(noisy))
    np.save(paths[modality, "clean"], np.asarray(clean))


def test_refuses_rows_out_of_range_repeated_overlapping_or_missing(tmp_path):
    draw, paths = _written(tmp_path)
    noisy, clean = draw.visible_noisy, draw.visible_clean
    cases = [
        ((np.append(noisy, 20), clean), r"p_rgb_noiseIdx\.npy: row 20 is out of range 0\.\.19"),
        ((noisy, np.append(clean, -1)), r"p_rgb_cleanIdx\.npy: row -1 is out of range"),
        ((np.append(noisy, noisy[0]), clean), rf"row {noisy[0]} is listed twice"),
        ((noisy, np.append(clean, noisy[1])), rf"p_rgb_noiseIdx\.npy and .*p_rgb_cleanIdx\.npy "
                                              rf"both list row {noisy[1]} \(1 rows in both\)"),
        ((noisy[1:], clean), rf"together miss row {noisy[0]} of 0\.\.19 \(1 rows in neither\)"),
    ]
    for (n, c), match in cases:
        _edit_rows(paths, "visible", n, c)
        _refused(tmp_path, match)


def test_refuses_labels_that_contradict_the_index_sets(tmp_path):
    draw, paths = _written(tmp_path)
    row_c, row_n = int(draw.infrared_clean[0]), int(draw.infrared_noisy[0])
    labels = draw.infrared.copy()
    labels[row_c] = (IR[row_c] + 1) % 6
    np.save(paths["infrared", "labels"], labels)
    _refused(tmp_path, rf"p_ir\.npy: row {row_c} is listed clean in .*p_ir_cleanIdx\.npy but its "
                       rf"label {labels[row_c]} is not its true label {IR[row_c]}")
    labels = draw.infrared.copy()
    labels[row_n] = IR[row_n]
    np.save(paths["infrared", "labels"], labels)
    _refused(tmp_path, rf"row {row_n} is listed noisy in .*p_ir_noiseIdx\.npy but keeps its true")
    labels[row_n] = 17
    np.save(paths["infrared", "labels"], labels)
    _refused(tmp_path, rf"row {row_n} has label 17, no identity of the infrared training list")


def test_write_refuses_a_draw_of_other_labels(tmp_path):
    draw = draw_noise(VIS, IR, 0.2, 0, every_identity_survives=False)
    with pytest.raises(InputError, match="visible noise draw does not belong"):
        write_noise_files(draw, VIS[:-1], IR, tmp_path / "p")
    with pytest.raises(InputError, match="infrared noise draw does not belong"):
        write_noise_files(draw, VIS, (IR + 1) % 6, tmp_path / "p")
    assert not any(tmp_path.glob("p_ir*"))


def test_a_draw_refuses_rows_outside_its_labels():
    with pytest.raises(InputError, match=r"visible_noisy must hold distinct rows in 0\.\.19"):
        NoiseDraw(VIS, IR, np.array([3, 20]), np.array([], dtype=np.int64))
    with pytest.raises(InputError, match="infrared_noisy must hold distinct rows"):
        NoiseDraw(VIS, IR, np.array([3]), np.array([2, 2]))


def test_split_files_round_trip_with_their_names(tmp_path):
    split = draw_split(VIS, IR, 0.5, "per_identity", 3)
    paths = write_split_files(split, VIS, IR, tmp_path / "split")
    assert [p.name for p in paths] == [f"split_{m}_{r}.npy" for m in ("rgb", "ir")
                                       for r in ("labelledIdx", "unlabelledIdx", "true")]
    np.testing.assert_array_equal(np.load(tmp_path / "split_ir_labelledIdx.npy"),
                                  split.infrared_labelled)
    np.testing.assert_array_equal(np.load(tmp_path / "split_rgb_unlabelledIdx.npy"),
                                  split.visible_unlabelled)
    np.testing.assert_array_equal(np.load(tmp_path / "split_rgb_true.npy"), VIS)
    assert np.load(tmp_path / "split_ir_true.npy").dtype == np.int64
    assert read_split_files(tmp_path / "split", VIS, IR).same_as(split)
    np.save(tmp_path / "split_ir_unlabelledIdx.npy", split.infrared_unlabelled[1:])
    with pytest.raises(DatasetError, match="together miss row"):
        read_split_files(tmp_path / "split", VIS, IR)
    (tmp_path / "split_rgb_true.npy").unlink()
    with pytest.raises(DatasetError, match=r"split_rgb_true\.npy"):
        read_split_files(tmp_path / "split", VIS, IR)
    with pytest.raises(InputError, match="visible split covers 20 rows but there are 19"):
        write_split_files(split, VIS[:-1], IR, tmp_path / "other")


def test_pseudo_label_files(tmp_path):
    vis = VIS.copy()
    vis[[1, 5]] = [4, 0]
    paths = write_pseudo_label_files(tmp_path / "split", vis.astype(np.int32), IR)
    assert [p.name for p in paths] == ["split_rgb_pseudo.npy", "split_ir_pseudo.npy"]
    stored = np.load(paths[0])
    assert stored.dtype == np.int64
    np.testing.assert_array_equal(stored, vis)
    np.testing.assert_array_equal(np.load(paths[1]), IR)
    with pytest.raises(InputError, match="infrared pseudo-labels"):
        write_pseudo_label_files(tmp_path / "split", vis, np.array([[1]]))
