"""torch Datasets over the memory-mapped image arrays of :mod:`tskd.data.cache`.

Items index the arrays row by row, so only the rows in use are read into memory. When a dataset
is pickled (spawn/forkserver DataLoader workers, ``ddp_spawn``), a memory-mapped array is sent as
its file name and reopened on the other side instead of being copied byte by byte.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tskd.core.errors import DatasetError
from tskd.data.transforms import TrainTransform, eval_transform

_MAPPED = "__mapped_array__"


def _pack(value: object) -> object:
    """A whole-file np.memmap -> a small descriptor; anything else unchanged."""
    if isinstance(value, np.memmap) and isinstance(value.base, mmap.mmap) and value.filename:
        # Only a memmap that owns its mmap has an exact (offset, shape); views fall through.
        order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
        return (_MAPPED, value.filename, value.dtype.str, value.shape, value.offset, order)
    return value


def _unpack(value: object) -> object:
    if isinstance(value, tuple) and value and value[0] == _MAPPED:
        _, filename, dtype, shape, offset, order = value
        return np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset,
                         shape=shape, order=order)
    return value


class _MappedDataset(Dataset):
    """Pickles memory-mapped attributes by reference (file name) instead of by content."""

    def __getstate__(self) -> dict:
        return {k: _pack(v) for k, v in self.__dict__.items()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({k: _unpack(v) for k, v in state.items()})


class RowView:
    """Rows of a (memory-mapped) array picked by an index list, without copying the array.

    Lets several record lists (RegDB's splits) share one cache. Pickles the array by reference.
    """

    def __init__(self, array: np.ndarray, rows: Sequence[int]) -> None:
        self.array = array
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.array[self.rows[i]]

    def __getstate__(self) -> dict:
        return {k: _pack(v) for k, v in self.__dict__.items()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({k: _unpack(v) for k, v in state.items()})


def _check_rows(images: np.ndarray, labels: np.ndarray, name: str) -> None:
    # Only shape/dtype/len are used, so row-selecting array-likes pass too.
    if len(images.shape) != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{name} images must be uint8 (N, H, W, 3), got {images.shape} "
                           f"{images.dtype}; rebuild the image cache")
    if len(images) != len(labels):
        raise DatasetError(f"{len(images)} {name} images but {len(labels)} labels; delete the "
                           "cache files so they are rebuilt from the current record list")


class CrossModalityTrainSet(_MappedDataset):
    """Aligned (visible, infrared) training pairs, indexed by the sampler's slots.

    Args:
        visible_images: uint8 (N_v, H, W, 3), typically a read-only memmap.
        infrared_images: uint8 (N_i, H, W, 3).
        visible_labels: (N_v,) labels 0..n-1.
        infrared_labels: (N_i,) labels 0..n-1.
        transform: Builds the three views from a pair and a generator.
    """

    def __init__(self, visible_images: np.ndarray, infrared_images: np.ndarray,
                 visible_labels: Sequence[int] | np.ndarray,
                 infrared_labels: Sequence[int] | np.ndarray, transform: TrainTransform) -> None:
        self.visible_images, self.infrared_images = visible_images, infrared_images
        self.visible_labels = np.asarray(visible_labels, dtype=np.int64)
        self.infrared_labels = np.asarray(infrared_labels, dtype=np.int64)
        _check_rows(visible_images, self.visible_labels, "visible")
        _check_rows(infrared_images, self.infrared_labels, "infrared")
        self.transform = transform

    def __len__(self) -> int:
        """N = max(#visible, #infrared), the size the epoch length is based on."""
        return max(len(self.visible_labels), len(self.infrared_labels))

    def __getitem__(self, slot: tuple[int, int, int]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int]:
        """``(vis_idx, ir_idx, sample_seed)`` -> (v1, v2, ir, label, vis_idx, ir_idx).

        The augmentation generator is seeded with ``sample_seed`` only, so the item is a pure
        function of the slot. v1/v2/ir are float32 (3, h, w); the rest are ints.
        """
        vis_idx, ir_idx, sample_seed = (int(v) for v in slot)
        label = int(self.visible_labels[vis_idx])
        if label != int(self.infrared_labels[ir_idx]):
            raise DatasetError(
                f"slot pairs visible row {vis_idx} (label {label}) with infrared row {ir_idx} "
                f"(label {int(self.infrared_labels[ir_idx])}); use CrossModalityIdentitySampler")
        g = torch.Generator().manual_seed(sample_seed)
        v1, v2, ir = self.transform(self.visible_images[vis_idx], self.infrared_images[ir_idx], g)
        return v1, v2, ir, label, vis_idx, ir_idx


class TestImageSet(_MappedDataset):
    """Test images: item i is row ``indices[i]`` of ``images`` with its modality.

    Args:
        images: uint8 (N, H, W, 3), the test protocol's images.
        modality: 0 visible or 1 infrared for every row, or an (N,) array with the modality of
            each row (e.g. ``TestProtocol.modality``); selects the network stem.
        indices: Rows to serve (e.g. the protocol's needed indices).
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, images: np.ndarray, modality: int | Sequence[int] | np.ndarray,
                 indices: Sequence[int] | np.ndarray) -> None:
        self.images = images
        n = len(images)
        mod = np.asarray(modality, dtype=np.int64)
        if mod.ndim == 0:
            mod = np.full(n, int(mod), dtype=np.int64)
        if mod.shape != (n,):
            raise DatasetError(f"modality has shape {mod.shape} but there are {n} test images; "
                               "pass one int or one value per cached image")
        self.modality = mod
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n):
            raise DatasetError(f"test indices range {self.indices.min()}..{self.indices.max()} "
                               f"outside the {n} cached test images; rebuild the cache")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        """-> (normalised float32 (3, H, W), modality, dataset index)."""
        row = int(self.indices[i])
        return eval_transform(self.images[row]), int(self.modality[row]), row


class CachedImageSet(_MappedDataset):
    """Plain pass over cached training images (e.g. the GMM confidence pass), test transform.

    Args:
        images: uint8 (N, H, W, 3).
        labels: (N,) labels.
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int] | np.ndarray) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        _check_rows(images, self.labels, "training")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        """-> (normalised float32 (3, H, W), label, index)."""
        return eval_transform(self.images[i]), int(self.labels[i]), int(i)


def _image_seed(seed: int, epoch: int, modality: int, row: int) -> int:
    """A per-image augmentation seed for the confidence pass of ``epoch``.

    SeedSequence mixes the four numbers, so seeds of neighbouring rows, epochs or modalities
    give unrelated streams; the value depends on nothing else, so every rank, worker and
    resumed run draws the same views of an image.
    """
    state = np.random.SeedSequence([seed, epoch, _CONFIDENCE_PASS_TAG, modality, row])
    return int(state.generate_state(1, np.uint64)[0] % np.uint64(2**63))


_CONFIDENCE_PASS_TAG = 0x6D6D  # keeps these seeds apart from any other stream of (seed, epoch)


class AugmentedPassSet(_MappedDataset):
    """Every training image once, in batches, with the training augmentations (GMM pass).

    Item ``b`` is one whole batch (use ``DataLoader(batch_size=None)``): chunk ``b`` of the
    visible rows (both views) and chunk ``b`` of the infrared rows. Both modalities are split
    into the same number of chunks, ``ceil(max(N_v, N_i) / batch_size)``, so each batch pairs
    about ``batch_size`` images of each modality, as the training batches do and as the
    BatchNorm statistics of a train-mode pass expect.

    Args:
        visible_images: uint8 (N_v, H, W, 3).
        infrared_images: uint8 (N_i, H, W, 3).
        visible_labels: (N_v,) labels.
        infrared_labels: (N_i,) labels.
        transform: The training transform (its visible and infrared views).
        batch_size: Images per modality and batch (P*K of training).
        seed: Base seed of the run.
        epoch: The epoch whose augmentation draws to use.
    """

    def __init__(self, visible_images: np.ndarray, infrared_images: np.ndarray,
                 visible_labels: Sequence[int] | np.ndarray,
                 infrared_labels: Sequence[int] | np.ndarray, transform: TrainTransform,
                 batch_size: int, seed: int, epoch: int) -> None:
        self.visible_images, self.infrared_images = visible_images, infrared_images
        self.visible_labels = np.asarray(visible_labels, dtype=np.int64)
        self.infrared_labels = np.asarray(infrared_labels, dtype=np.int64)
        _check_rows(visible_images, self.visible_labels, "visible")
        _check_rows(infrared_images, self.infrared_labels, "infrared")
        if batch_size < 1:
            raise DatasetError(f"confidence-pass batch size must be >= 1, got {batch_size}")
        self.transform, self.seed, self.epoch = transform, int(seed), int(epoch)
        n_v, n_i = len(self.visible_labels), len(self.infrared_labels)
        num_batches = -(-max(n_v, n_i) // batch_size)
        self.visible_chunks = np.array_split(np.arange(n_v), num_batches)
        self.infrared_chunks = np.array_split(np.arange(n_i), num_batches)

    def __len__(self) -> int:
        return len(self.visible_chunks)

    def _stack(self, views: list[torch.Tensor], like: np.ndarray) -> torch.Tensor:
        if views:
            return torch.stack(views)
        h, w = self.transform.height, self.transform.width
        return torch.zeros(0, like.shape[-1], h, w)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, ...]:
        """-> (v1 (Bv,3,h,w), v2, ir (Bi,3,h,w), vis_labels, ir_labels, vis_rows, ir_rows)."""
        vis_rows, ir_rows = self.visible_chunks[b], self.infrared_chunks[b]
        v1, v2, ir = [], [], []
        for row in vis_rows:
            g = torch.Generator().manual_seed(_image_seed(self.seed, self.epoch, 0, int(row)))
            a, c = self.transform.visible_views(self.visible_images[row], g)
            v1.append(a)
            v2.append(c)
        for row in ir_rows:
            g = torch.Generator().manual_seed(_image_seed(self.seed, self.epoch, 1, int(row)))
            ir.append(self.transform.infrared_view(self.infrared_images[row], g))
        return (self._stack(v1, self.visible_images), self._stack(v2, self.visible_images),
                self._stack(ir, self.infrared_images),
                torch.from_numpy(self.visible_labels[vis_rows]),
                torch.from_numpy(self.infrared_labels[ir_rows]),
                torch.from_numpy(vis_rows), torch.from_numpy(ir_rows))
