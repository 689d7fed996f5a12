"""Small synthetic dataset trees in the real SYSU-MM01 and RegDB layouts (seconds to write)."""

from __future__ import annotations

from pathlib import Path

from tskd.data.synthetic import make_regdb, make_sysu


def sysu_tree(root: Path, num_train: int = 6) -> Path:
    return make_sysu(root, seed=5, num_train=num_train, num_val=2, num_test=5, images_per_cam=2,
                     size=(96, 48))


def regdb_tree(root: Path) -> Path:
    return make_regdb(root, seed=2, num_ids=8, images_per_modality=2, size=(96, 48))
