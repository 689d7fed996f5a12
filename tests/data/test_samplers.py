"""Tests of the identity-aligned cross-modality batch sampler, single process and 2 ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from tskd.core.errors import DatasetError
from tskd.data.samplers import CrossModalityIdentitySampler

P, K = 3, 4


def _labels(n_ids=10, seed=0):
    """Shuffled labels with uneven counts; identity 0 has one visible image only."""
    rng = np.random.default_rng(seed)
    vis = np.concatenate([[0]] + [[i] * int(rng.integers(2, 9)) for i in range(1, n_ids)])
    ir = np.concatenate([[i] * int(rng.integers(1, 6)) for i in range(n_ids)])
    return rng.permutation(vis), rng.permutation(ir)


def _check_batch(batch, vis, ir, num_ids=P):
    assert len(batch) == num_ids * K
    arr = np.asarray(batch)  # (B, 3)
    vl, il = vis[arr[:, 0]], ir[arr[:, 1]]
    np.testing.assert_array_equal(vl, il)  # identity-aligned slots
    ids = vl.reshape(num_ids, K)
    assert (ids == ids[:, :1]).all()  # slot j belongs to ids[j // K]
    assert len(set(ids[:, 0])) == num_ids  # P distinct identities
    return ids[:, 0]


def test_batches_are_identity_aligned():
    vis, ir = _labels()
    s = CrossModalityIdentitySampler(vis, ir, num_ids=P, num_pos=K, seed=1)
    batches = list(s)
    seeds = []
    for batch in batches:
        _check_batch(batch, vis, ir)
        assert all(isinstance(x, int) for slot in batch for x in slot)
        seeds += [slot[2] for slot in batch]
    assert len(set(seeds)) == len(seeds)
    assert min(seeds) >= 0 and max(seeds) < 2**63
    # Identity 0 has a single visible row, so every one of its slots must reuse that row.
    only = int(np.flatnonzero(vis == 0)[0])
    zero_slots = [slot for b in batches for slot in b if vis[slot[0]] == 0]
    assert zero_slots and all(slot[0] == only for slot in zero_slots)


def test_epoch_length():
    vis, ir = _labels()
    n = max(len(vis), len(ir))
    s = CrossModalityIdentitySampler(vis, ir, num_ids=P, num_pos=K)
    assert len(s) == n // (P * K) + 1 == len(list(s))
    # 50 visible, 37 infrared, P*K = 8: G = 7; two ranks -> ceil(7 / 2) = 4 each.
    vis2, ir2 = np.arange(50) % 5, np.arange(37) % 5
    assert len(CrossModalityIdentitySampler(vis2, ir2, num_ids=2, num_pos=4)) == 7
    two = [CrossModalityIdentitySampler(vis2, ir2, 2, 4, rank=r, world_size=2) for r in (0, 1)]
    assert [len(x) for x in two] == [4, 4] == [len(list(x)) for x in two]


def test_deterministic_per_epoch_and_changes_across_epochs():
    vis, ir = _labels()
    a = CrossModalityIdentitySampler(vis, ir, num_ids=P, num_pos=K, seed=5)
    b = CrossModalityIdentitySampler(vis, ir, num_ids=P, num_pos=K, seed=5)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating again replays the epoch (resume-safe)
    epoch0 = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != epoch0
    a.set_epoch(0)
    assert list(a) == epoch0
    other_seed = CrossModalityIdentitySampler(vis, ir, num_ids=P, num_pos=K, seed=6)
    assert list(other_seed) != epoch0


def test_two_ranks_split_each_global_batch():
    vis, ir = _labels(n_ids=12)
    ranks = [CrossModalityIdentitySampler(vis, ir, num_ids=P, num_pos=K, seed=3, rank=r,
                                          world_size=2) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(2)
    streams = [list(s) for s in ranks]
    assert len(streams[0]) == len(streams[1]) == len(ranks[0])
    glob = ranks[0].global_stream()
    np.testing.assert_array_equal(glob, ranks[1].global_stream())  # same stream on every rank
    for b, (r0, r1) in enumerate(zip(*streams)):
        ids0, ids1 = _check_batch(r0, vis, ir), _check_batch(r1, vis, ir)
        assert not set(ids0) & set(ids1)  # disjoint identities across ranks
        # The union of the ranks is exactly the global draw: nothing duplicated or dropped.
        np.testing.assert_array_equal(np.asarray(r0 + r1), glob[b])
        _check_batch(glob[b].tolist(), vis, ir, num_ids=2 * P)


@pytest.mark.parametrize(
    "vis, ir, kwargs, message",
    [
        (np.arange(4), np.arange(4), {"num_ids": 3, "world_size": 2}, "lower data.num_ids"),
        (np.array([0, 1, 2]), np.array([0, 1]), {"num_ids": 1}, r"identities \[2\] have no "
                                                                "infrared"),
        (np.array([0, 2, 3]), np.array([0, 2, 3]), {"num_ids": 1}, "0..n-1"),
        (np.array([-1, 0]), np.array([-1, 0]), {"num_ids": 1}, "0..n-1"),
        (np.array([0.5, 1.0]), np.array([0, 1]), {"num_ids": 1}, "integer"),
        (np.arange(4), np.arange(4), {"num_ids": 0}, "data.num_ids=0"),
    ],
)
def test_errors(vis, ir, kwargs, message):
    with pytest.raises(DatasetError, match=message):
        CrossModalityIdentitySampler(vis, ir, **kwargs)


class _SlotSet(Dataset):
    def __getitem__(self, slot):
        return torch.tensor(slot)


def test_usable_as_dataloader_batch_sampler():
    vis, ir = _labels()
    s = CrossModalityIdentitySampler(vis, ir, num_ids=P, num_pos=K, seed=2)
    loader = DataLoader(_SlotSet(), batch_sampler=s)
    batches = list(loader)
    assert len(loader) == len(s) == len(batches)
    assert batches[0].shape == (P * K, 3) and batches[0].dtype == torch.int64
    np.testing.assert_array_equal(torch.stack(batches).numpy(), s.global_stream())


def test_lightning_calls_set_epoch_without_wrapping():
    import pytorch_lightning as pl  # a runtime dependency: never a reason to skip
    vis, ir = _labels()
    s = CrossModalityIdentitySampler(vis, ir, num_ids=P, num_pos=K, seed=4)

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = {}

        def training_step(self, batch, _):
            self.seen.setdefault(self.current_epoch, []).append(batch.clone())
            return (self.w * 0.0).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Recorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                         use_distributed_sampler=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(_SlotSet(), batch_sampler=s))
    for epoch in (0, 1):
        got = torch.stack(model.seen[epoch]).numpy()
        np.testing.assert_array_equal(got, s.global_stream(epoch))
