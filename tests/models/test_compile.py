"""model.compile: a torch.compile'd training forward gives the eager loss and gradients."""

from __future__ import annotations

import contextlib
import functools
import os
from types import SimpleNamespace

import pytest
import torch
from helpers import configs

from tskd.config import LossConfig, OptimConfig
from tskd.models.tskd_module import TSKDModule

LOSS = {"sm_w": 1.0, "md_w": 0.05, "md_start": 1, "margin": 0.3, "ce_only_epochs": 1,
        "soft_identity": True, "triplet_per_modality": False, "sm_metric": "l1",
        "sm_form": "code", "md_form": "code", "md_bandwidth": "offdiag",
        "prototype_pass": True, "prototype_norm": "count", "gmm_pass": "train",
        "gmm": {"max_iter": 100, "tol": 1e-2, "reg_covar": 5e-4}}
OPTIM = {"lr_head": 0.1, "lr_backbone": 0.01, "momentum": 0.9, "nesterov": True,
         "weight_decay": 5e-4, "warmup_epochs": 10, "milestones": [20, 40], "gamma": 0.1}
P, K, IDS = 3, 2, 4
# inductor (the default backend) needs a C compiler and minutes of CPU for a ResNet; the test
# runs the same graph capture and autograd split with aot_eager unless asked for inductor.
BACKEND = os.environ.get("TSKD_TEST_COMPILE_BACKEND", "aot_eager")


def _module(compile_net: bool) -> TSKDModule:
    torch.manual_seed(0)
    m = TSKDModule(
        num_classes=IDS, num_visible=P * K, num_infrared=P * K,
        dataset=configs.dataset("sysu", root="x", img_h=32, img_w=16),
        model=configs.model(backbone="resnet18", pretrained=False, compile=compile_net),
        loss=LossConfig.of(LOSS, "loss"), optim=OptimConfig.of(OPTIM, "optim"),
        eval=configs.eval_options(),
    )
    m.log = lambda *a, **kw: None
    m._trainer = SimpleNamespace(current_epoch=1, global_step=0, world_size=1,
                                 precision_plugin=SimpleNamespace(
                                     forward_context=contextlib.nullcontext))
    return m


def _batch():
    g = torch.Generator().manual_seed(1)
    imgs = [torch.randn(P * K, 3, 32, 16, generator=g) for _ in range(3)]
    labels = torch.arange(P).repeat_interleave(K)
    return (*imgs, labels, torch.arange(P * K), torch.arange(P * K))


@pytest.fixture
def compile_backend(monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=BACKEND))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_training_step_matches_eager(compile_backend):
    eager, compiled = _module(False), _module(True)
    assert "forward_train" in vars(compiled.net) and "forward_train" not in vars(eager.net)
    # a stage-II step (every loss on) against the same weights, batch and bank
    loss_e = eager.training_step(_batch(), 0)
    loss_c = compiled.training_step(_batch(), 0)
    loss_e.backward()
    loss_c.backward()
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    grads = 0
    for (name, p_e), (_, p_c) in zip(eager.named_parameters(), compiled.named_parameters()):
        if p_e.grad is None:
            assert p_c.grad is None, name
            continue
        torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-3, atol=1e-5, msg=name)
        grads += 1
    assert grads > 50  # the whole network was compared, not just the head


def test_compile_keeps_checkpoint_names(compile_backend):
    # the compiled forward is swapped on the instance: parameter names stay those of eager
    # checkpoints, so a model trained with compile loads into an eager one and back
    eager, compiled = _module(False), _module(True)
    assert list(eager.state_dict()) == list(compiled.state_dict())
    eager.load_state_dict(compiled.state_dict())
    assert compiled.hparams.model["compile"] is True
