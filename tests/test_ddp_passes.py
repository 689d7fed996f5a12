"""Under DDP the confidences and prototypes equal one process's over the same slots.

Two gloo processes train the tiny synthetic run for two epochs (warm-up, then stage I, whose
confidence pass opens it and whose prototype pass closes it). The test then recomputes both
passes in this single process from the weights each pass used (saved by a probe callback), over
the images and slots the two ranks handled together, and compares with the checkpoint.
Agreement between the ranks alone would not do: they agree after a reduction even when the
reduced sums are wrong (DDP used to overwrite rank 1's sums with rank 0's).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import configs
from helpers.entry_runs import TINY, run_entry
from torch.utils.data import DataLoader

from tskd.checkpoints.loading import build_module
from tskd.data.datamodule import ReIDDataModule
from tskd.data.datasets import AugmentedPassSet
from tskd.data.samplers import CrossModalityIdentitySampler, FreshDrawBatches
from tskd.losses import PrototypeBank, gmm_confidence, visible_view_confidences
from tskd.models.epoch_passes import accumulate_prototypes, augmented_losses

pytestmark = pytest.mark.e2e  # each test here starts train.py, eval.py, an app or another process

HERE = Path(__file__).resolve().parent
EPOCH = 1  # the stage-I epoch: ce_only_epochs=1, max_epochs=2
P, K, BATCHES, WORLD = 4, 2, 3, 2  # TINY's data.num_ids, data.num_pos, limit_train_batches


def test_ddp_confidences_and_prototypes_equal_one_process(tmp_path, data_dir):
    run, probe = tmp_path / "ddp", tmp_path / "probe"
    env = {"PYTHONPATH": os.pathsep.join([str(HERE / "helpers"), os.environ.get("PYTHONPATH", "")]),
           "TSKD_DATA_DIR": str(data_dir)}
    run_entry("train.py", ["experiment=synthetic", *TINY, f"hydra.run.dir={run}",
                           "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                           "trainer.precision=32-true", "trainer.channels_last=false",
                           "trainer.max_epochs=2", "test_after_training=false", "logger=none",
                           "+callbacks.probe._target_=pass_probe.PassProbe",
                           f"+callbacks.probe.out={probe}"], env=env)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state, hp = ckpt["state_dict"], ckpt["hyper_parameters"]

    dm = ReIDDataModule(configs.dataset(root=str(data_dir / "synthetic_sysu"), img_h=64,
                                        img_w=32),
                        configs.data(num_ids=P, num_pos=K, num_workers=0, pad=2), mode="all",
                        seed=0)
    dm.setup("fit")
    n_vis, n_ir = len(dm.visible_labels), len(dm.infrared_labels)

    def net_with(weights: str) -> torch.nn.Module:
        # the checkpoint's own builder: the network exactly as the run built it
        net = build_module(ckpt, run / "checkpoints" / "last.ckpt").net
        net.load_state_dict(torch.load(probe / f"{weights}_epoch{EPOCH}.pt", weights_only=True))
        return net

    # confidences: every batch of the pass in one process (the ranks took alternate batches)
    passes = AugmentedPassSet(dm.visible_images, dm.infrared_images, dm.visible_labels,
                              dm.infrared_labels, dm.transform, batch_size=P * K, seed=0,
                              epoch=EPOCH)
    l1, l2, l_ir = augmented_losses(net_with("before_confidence_pass"),
                                    DataLoader(passes, batch_size=None), n_vis, n_ir)
    w1, w2 = visible_view_confidences(l1, l2)
    expected = {"conf_view1": w1, "conf_view2": w2, "conf_infrared": gmm_confidence(l_ir)}
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=name)

    # prototypes: both ranks' slots of the epoch, through one bank in one process
    bank = PrototypeBank(hp["num_classes"], dim=state["bank.prototypes"].shape[-1])
    bank.valid.copy_(torch.zeros_like(bank.valid))
    net = net_with("before_prototype_pass")
    confidences = (state["conf_view1"], state["conf_view2"], state["conf_infrared"])
    for rank in range(WORLD):
        sampler = CrossModalityIdentitySampler(dm.visible_labels, dm.infrared_labels,
                                               num_ids=P, num_pos=K, seed=0, rank=rank,
                                               world_size=WORLD)
        loader = DataLoader(dm._train_set(), batch_sampler=FreshDrawBatches(sampler, EPOCH,
                                                                             BATCHES))
        accumulate_prototypes(net, loader, bank, confidences)
    slots_seen = int(bank.count.sum())
    assert slots_seen == WORLD * BATCHES * P * K * 3  # every slot of both ranks, three views
    bank.finalize()
    assert torch.equal(state["bank.valid"], bank.valid)
    assert int(bank.valid.sum()) > P  # both ranks' identities, not only rank 0's
    torch.testing.assert_close(state["bank.prototypes"], bank.prototypes, rtol=1e-4, atol=1e-5)
    assert np.isfinite(state["bank.prototypes"].numpy()).all()
