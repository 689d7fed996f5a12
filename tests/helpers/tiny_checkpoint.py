"""A tiny untrained checkpoint and its small SYSU-layout data, built once per test session.

An untrained resnet18 (random BatchNorm statistics, so every layer matters) stands in for a
trained model in the inference, export and visualiser tests; the ``tiny`` fixture in
conftest.py builds it once and all three share it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import configs

from tskd.data import sysu
from tskd.data.synthetic import make_sysu

IMG_SIZE = (64, 32)  # model input; the files are 96x48, so every path is really resized
SOURCE_SIZE = (96, 48)


def make_data(root: Path) -> Path:
    """A small SYSU-layout dataset (8 training ids, 5 test ids)."""
    return make_sysu(root, seed=3, num_train=6, num_val=2, num_test=5, images_per_cam=2,
                     size=SOURCE_SIZE)


def make_checkpoint(path: Path, data_root: Path) -> Path:
    """Write a tskd checkpoint of an untrained resnet18 for the data at ``data_root``."""
    from tskd.models.tskd_module import TSKDModule

    vis, ir = sysu.train_set(data_root)
    torch.manual_seed(0)
    m = TSKDModule(
        num_classes=max(r[1] for r in vis) + 1, num_visible=len(vis), num_infrared=len(ir),
        dataset=configs.dataset("sysu", root=str(data_root), img_h=IMG_SIZE[0],
                                img_w=IMG_SIZE[1]),
        model=configs.model(backbone="resnet18", pretrained=False), loss=configs.loss(),
        optim=configs.optim(), eval=configs.eval_options(),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random BN statistics: non-local blocks and BN-neck stop being identity
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(n, generator=g))
                mod.bias.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
    meta: dict = {}
    m.on_save_checkpoint(meta)
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams), **meta}, path)
    return path


def make_non_finite_checkpoint(src: Path, dst: Path) -> Path:
    """``src`` with every floating-point tensor NaN: what a run saved after it diverged."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    for value in ckpt["state_dict"].values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value.fill_(float("nan"))
    torch.save(ckpt, dst)
    return dst
