"""Checkpoints written the way train.py writes them, and evaluated the way eval.py does.

Each holds the module's hyper-parameters, the whole run config and the ``tskd`` metadata, but an
untrained model, so evaluating or resuming one takes seconds. Used by the evaluation, resume,
config and checkpoint-trust tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
from helpers.hydra_compose import compose_config

from tskd.data import regdb, sysu


def write_checkpoint(path: Path, overrides: list[str]) -> Path:
    """A tskd checkpoint of an untrained model for the train config of ``overrides``."""
    from tskd.config import validate
    from tskd.models.tskd_module import TSKDModule
    from tskd.runner.run import _plain

    cfg = compose_config("train", [*overrides, f"paths.output_dir={path.parent / 'run'}"])
    c = validate(cfg)
    d = c.dataset
    vis, ir = (sysu.train_set(d.root) if d.name == "sysu" else regdb.train_set(d.root, d.trial))
    torch.manual_seed(0)
    m = TSKDModule(
        num_classes=max(r[1] for r in vis) + 1, num_visible=len(vis), num_infrared=len(ir),
        dataset=d, model=c.model, loss=c.loss, optim=c.optim, eval=c.eval, config=_plain(cfg),
    )
    meta: dict = {}
    m.on_save_checkpoint(meta)
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams), **meta}, path)
    return path


def evaluate(ckpt: Path, out: Path, *keys: str) -> dict:
    """tskd.runner.run.evaluate_checkpoint as eval.py calls it, with only ``keys`` on the
    command line."""
    from tskd.runner.run import evaluate_checkpoint

    overrides = [f"ckpt={ckpt}", "data.num_workers=0", f"paths.output_dir={out}", *keys]
    return evaluate_checkpoint(compose_config("eval", overrides), overrides)
