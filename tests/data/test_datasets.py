"""Tests of the Datasets over memory-mapped arrays: items, determinism, loaders, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tskd.core.errors import DatasetError
from tskd.data.datasets import CachedImageSet, CrossModalityTrainSet, TestImageSet
from tskd.data.samplers import CrossModalityIdentitySampler
from tskd.data.transforms import TrainTransform, eval_transform

H, W = 32, 16


def _mapped(tmp_path, name, n, seed):
    arr = np.random.default_rng(seed).integers(0, 256, size=(n, H, W, 3), dtype=np.uint8)
    np.save(tmp_path / f"{name}.npy", arr)
    return np.load(tmp_path / f"{name}.npy", mmap_mode="r")


@pytest.fixture
def train_set(tmp_path):
    vis_labels = np.repeat(np.arange(6), 4)  # 24 visible rows
    ir_labels = np.tile(np.arange(6), 3)  # 18 infrared rows, another order
    return CrossModalityTrainSet(_mapped(tmp_path, "vis", 24, 0), _mapped(tmp_path, "ir", 18, 1),
                                 vis_labels, ir_labels, TrainTransform(H, W, pad=4))


def test_train_item_types_and_determinism(train_set):
    item = train_set[(5, 7, 123)]  # visible row 5 and infrared row 7 are both identity 1
    v1, v2, ir, label, vis_idx, ir_idx = item
    for v in (v1, v2, ir):
        assert v.shape == (3, H, W) and v.dtype == torch.float32
    assert (label, vis_idx, ir_idx) == (1, 5, 7)
    assert all(isinstance(x, int) for x in (label, vis_idx, ir_idx))
    again = train_set[(5, 7, 123)]
    assert all(torch.equal(a, b) for a, b in zip(item[:3], again[:3]))
    other = train_set[(5, 7, 124)]
    assert not all(torch.equal(a, b) for a, b in zip(item[:3], other[:3]))
    assert len(train_set) == 24


def test_train_item_rejects_misaligned_pair(train_set):
    with pytest.raises(DatasetError, match=r"visible row 0 \(label 0\).*infrared row 1"):
        train_set[(0, 1, 0)]


def test_train_set_rejects_bad_arrays(tmp_path):
    vis = _mapped(tmp_path, "v", 4, 0)
    with pytest.raises(DatasetError, match="4 visible images but 3 labels"):
        CrossModalityTrainSet(vis, vis, [0, 0, 1], [0, 0, 1, 1], TrainTransform(H, W))
    with pytest.raises(DatasetError, match=r"uint8 \(N, H, W, 3\)"):
        CachedImageSet(np.zeros((2, H, W, 3), np.float32), [0, 1])


def _loader(ds, num_workers):
    sampler = CrossModalityIdentitySampler(ds.visible_labels, ds.infrared_labels, num_ids=2,
                                           num_pos=2, seed=9)
    return DataLoader(ds, batch_sampler=sampler, num_workers=num_workers)


def test_dataloader_batches_match_across_worker_counts(train_set):
    serial = list(_loader(train_set, 0))
    v1, v2, ir, labels, vis_idx, ir_idx = serial[0]
    assert v1.shape == v2.shape == ir.shape == (4, 3, H, W)
    assert labels.dtype == vis_idx.dtype == ir_idx.dtype == torch.int64
    np.testing.assert_array_equal(train_set.visible_labels[vis_idx.numpy()], labels.numpy())
    np.testing.assert_array_equal(train_set.infrared_labels[ir_idx.numpy()], labels.numpy())
    # Augmentation depends on the slot's seed only, so worker processes give identical batches.
    workers = list(_loader(train_set, 2))
    assert len(workers) == len(serial)
    for a, b in zip(serial, workers):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_pickle_sends_memmaps_by_reference(train_set, tmp_path):
    blob = pickle.dumps(train_set)
    assert len(blob) < 4000 < train_set.visible_images.nbytes
    copy = pickle.loads(blob)
    assert isinstance(copy.visible_images, np.memmap)
    np.testing.assert_array_equal(copy.infrared_images, train_set.infrared_images)
    assert all(torch.equal(a, b) for a, b in zip(copy[(5, 7, 1)][:3], train_set[(5, 7, 1)][:3]))
    # A plain in-RAM array still pickles (by value).
    plain = CachedImageSet(np.asarray(train_set.visible_images), train_set.visible_labels)
    assert torch.equal(pickle.loads(pickle.dumps(plain))[3][0], plain[3][0])


def test_test_image_set(tmp_path):
    images = _mapped(tmp_path, "test", 10, 2)
    ds = TestImageSet(images, modality=1, indices=[7, 2, 9])
    assert len(ds) == 3
    img, modality, index = ds[1]
    assert (modality, index) == (1, 2)
    assert img.shape == (3, H, W) and img.dtype == torch.float32
    torch.testing.assert_close(img, eval_transform(np.asarray(images[2])))
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch[2].tolist() == [7, 2, 9] and batch[1].tolist() == [1, 1, 1]
    with pytest.raises(DatasetError, match="outside the 10 cached test images"):
        TestImageSet(images, 0, [3, 10])
    # Per-row modality (the protocol's array), e.g. infrared queries then visible gallery.
    per_row = np.array([1] * 4 + [0] * 6)
    mixed = TestImageSet(images, per_row, [0, 5, 3])
    assert [mixed[i][1] for i in range(3)] == [1, 0, 1]
    with pytest.raises(DatasetError, match="one value per cached image"):
        TestImageSet(images, per_row[:9], [0])


class _Rows:
    """A row-selecting array-like (shape, dtype, len, []) like the datamodule's RegDB views."""

    def __init__(self, array, rows):
        self.array, self.rows = array, np.asarray(rows)
        self.shape, self.dtype = (len(self.rows), *array.shape[1:]), array.dtype

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.array[self.rows[i]]


def test_array_likes_are_accepted(tmp_path):
    images = _mapped(tmp_path, "all", 8, 4)
    view = _Rows(images, [6, 1, 4])
    ds = CachedImageSet(view, [0, 1, 2])
    torch.testing.assert_close(ds[0][0], eval_transform(np.asarray(images[6])))
    img, _, index = TestImageSet(view, 0, [2])[0]
    assert index == 2
    torch.testing.assert_close(img, eval_transform(np.asarray(images[4])))


def test_cached_image_set(tmp_path):
    images = _mapped(tmp_path, "train", 5, 3)
    ds = CachedImageSet(images, [4, 3, 2, 1, 0])
    img, label, index = ds[1]
    assert (label, index) == (3, 1) and len(ds) == 5
    torch.testing.assert_close(img, eval_transform(np.asarray(images[1])))


def test_row_view_selects_rows_and_pickles_by_reference(tmp_path):
    import pickle

    from tskd.data.datasets import RowView

    arr = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.uint8,
                                    shape=(5, 4, 2, 3))
    arr[:] = np.arange(5, dtype=np.uint8)[:, None, None, None]
    arr.flush()
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    view = RowView(mm, [4, 0, 2])
    assert len(view) == 3 and view.shape == (3, 4, 2, 3)
    assert [int(view[i][0, 0, 0]) for i in range(3)] == [4, 0, 2]
    blob = pickle.dumps(view)
    assert len(blob) < 4096  # the array travels as its file name, not its bytes
    again = pickle.loads(blob)
    assert int(again[0][0, 0, 0]) == 4
