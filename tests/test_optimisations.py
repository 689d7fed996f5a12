"""Issue 12's optimisations change no result: the same batches, bit-identical losses.

The old forms are the copies kept in ``tests/helpers/before_issue12.py`` (the benchmark
``benchmarks/optimisations.py`` measures them from there); this checks the new code against
them and that the losses read device values once per call (one GPU synchronisation).
"""

from __future__ import annotations

import pytest
import torch
from helpers import before_issue12 as old
from helpers import configs
from helpers.entry_runs import run_entry
from helpers.loss_equivalence import host_reads, identical, loss_inputs

from tskd.data.datamodule import ReIDDataModule
from tskd.data.synthetic import make_sysu
from tskd.losses import BatchHardTriplet, MutualDistillationLoss

LOSSES = ["triplet", "self-mimic", "MD", "triplet per modality"]


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    root = make_sysu(tmp_path_factory.mktemp("opt") / "sysu", seed=5, num_train=10, num_val=2,
                     num_test=6, images_per_cam=2, size=(32, 16))
    dm = ReIDDataModule(configs.dataset(root=str(root), img_h=16, img_w=8),
                        configs.data(num_ids=3, num_pos=2, num_workers=2, test_batch_size=16,
                                     pad=2), mode="all", seed=0)
    dm.setup()
    return dm


def _epochs(loader, epochs: int, batches: int) -> list:
    out = []
    for e in range(epochs):
        loader.batch_sampler.set_epoch(e)
        for i, batch in enumerate(loader):
            if i == batches:
                break  # a partial epoch, as limit_train_batches makes
            out.append(batch)
    return out


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for s, t in zip(x, y):
            assert torch.equal(s, t)


def test_persistent_workers_give_the_same_training_batches(dm):
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    persistent = _epochs(loader, 3, 2)
    _assert_same(persistent, _epochs(old.old_train_dataloader(dm), 3, 2))
    dm.num_workers = 0
    try:
        _assert_same(persistent, _epochs(dm.train_dataloader(), 3, 2))
    finally:
        dm.num_workers = 2
    # epochs differ from each other: set_epoch reached the sampler through the live workers
    assert not torch.equal(persistent[0][0], persistent[2][0])


def test_val_loader_workers_persist_and_serve_the_test_images(dm):
    val = dm.val_dataloader()
    assert val.persistent_workers
    assert not dm.test_dataloader().persistent_workers  # one pass per trainer.test
    first, second = list(val), list(val)
    _assert_same(first, second)
    _assert_same(first, list(dm.test_dataloader()))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("all_prototypes", [True, False], ids=["bank-full", "bank-partial"])
@pytest.mark.parametrize("seed", [0, 1])
def test_losses_are_bit_identical_to_the_code_they_replace(name, all_prototypes, seed):
    x = loss_inputs(4, 3, 8, num_classes=10, seed=seed, all_prototypes=all_prototypes)
    assert identical(x, name)


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_reads_device_values_once_per_call(name):
    before, after = host_reads(loss_inputs(4, 2, 8, num_classes=10), name)
    assert after == 1 < before


def test_irregular_batches_match_the_old_code_too():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(9, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 0, 2, 2])
    modality = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 2])  # a group without a valid anchor
    for kw in ({}, {"per_modality": True}):
        new = BatchHardTriplet(**kw)(f, labels, modality)
        assert torch.equal(new, old.OldTriplet(**kw)(f, labels, modality))
    md_labels = torch.tensor([4, 4, 4, 9, 9])  # unequal identity counts: the per-group loop
    fs = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    assert torch.equal(MutualDistillationLoss()(*fs, md_labels),
                       old.OldMutualDistillation()(*fs, md_labels))


@pytest.mark.e2e
def test_optimisations_benchmark_dry_run(tmp_path):
    out = tmp_path / "opt.txt"
    proc = run_entry("benchmarks/optimisations.py",
                     ["--dry-run", "--data-root", str(tmp_path / "sysu"), "--out", str(out)])
    report = out.read_text()
    for part in ("1. persistent loader workers", "2. host synchronisations",
                 "whole training step", "3. uint8 instead of float32"):
        assert part in report
    assert "NO" not in report  # every old/new pair bit-identical
    assert "written to" in proc.stdout
