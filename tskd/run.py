"""What train.py and eval.py do: build everything from a Hydra config, run, write results.

Kept out of the entry scripts so tests (and users' own scripts) can call :func:`train` and
:func:`evaluate` with a composed config.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from tskd.checkpoint import build_module, load_checkpoint
from tskd.data.datamodule import ReIDDataModule
from tskd.errors import CheckpointError
from tskd.models.tskd_module import TSKDModule
from tskd.trainer import build_trainer, device_settings

log = logging.getLogger(__name__)


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_datamodule(cfg: DictConfig, **overrides) -> ReIDDataModule:
    """The datamodule of ``cfg.dataset`` / ``cfg.data`` / ``cfg.mode``."""
    d, data = cfg.dataset, cfg.data
    kw = dict(
        name=d.name, root=d.root, img_h=d.img_h, img_w=d.img_w, trial=d.trial,
        modes=(cfg.mode.name,), shots=d.get("shots", 1), cache_dir=d.get("cache_dir"),
        synthetic=_plain(d.get("synthetic")), num_ids=data.get("num_ids", 8),
        num_pos=data.get("num_pos", 4), num_workers=data.num_workers,
        test_batch_size=data.test_batch_size, seed=cfg.seed, pad=data.get("pad", 10),
        erasing_p=data.get("erasing_p", 0.5), gray_p=data.get("gray_p", 0.5),
        gray_draw=data.get("gray_draw", "caj"),
        channel_exchange=data.get("channel_exchange", True),
    )
    kw.update(overrides)
    return ReIDDataModule(**kw)


def write_run_info(out: Path) -> None:
    """The git revision and versions a run used, beside Hydra's saved config."""
    info = {"command": sys.argv, "python": platform.python_version(),
            "torch": torch.__version__, "pytorch_lightning": pl.__version__}
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            info["git_revision"] = rev.stdout.strip()
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["git_revision"] = None
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_info.json").write_text(json.dumps(info, indent=2))


def _primary_setting(cfg: DictConfig) -> str:
    return cfg.mode.name if cfg.dataset.name == "sysu" else "visible2thermal"


def _report(cfg: DictConfig, trainer: pl.Trainer, summaries: list[dict], out: Path) -> dict:
    options = {"flip": bool(cfg.eval.get("flip", False)),
               "rerank": bool(cfg.eval.get("rerank", False))}
    if not trainer.is_global_zero:
        return {}
    from tskd.evaluation import format_table, write_metrics_json

    result = write_metrics_json(out / "metrics.json", summaries, _primary_setting(cfg), options)
    print(format_table(summaries, options))  # the entry point's output, rank 0 only
    return result


def _is_local_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def train(cfg: DictConfig) -> dict:
    """Train, save ``checkpoints/last.ckpt``, test the last epoch; returns metrics.json's dict."""
    out = Path(cfg.paths.output_dir)
    if _is_local_zero():
        write_run_info(out)
        log.info("run dir: %s", out)
    pl.seed_everything(cfg.seed, workers=True)
    settings = device_settings(_plain(cfg.trainer))
    dm = build_datamodule(cfg)
    if _is_local_zero():
        dm.prepare_data()  # data and caches exist before DDP ranks start reading them
    dm.setup("fit")
    model = TSKDModule(
        num_classes=dm.num_classes, num_visible=len(dm.visible_labels),
        num_infrared=len(dm.infrared_labels),
        dataset={k: cfg.dataset[k] for k in ("name", "root", "trial", "img_h", "img_w")},
        model=_plain(cfg.model), loss=_plain(cfg.loss), optim=_plain(cfg.optim),
        eval={k: cfg.eval[k] for k in ("flip", "rerank")},
        channels_last=settings["channels_last"],
        config=_plain(cfg),
    )
    if cfg.dataset.synthetic is None and not cfg.model.pretrained:
        log.warning("training on real data from random init (model.pretrained=false); the "
                    "paper's numbers need ImageNet weights: model.pretrained=true or a file path")
    trainer = build_trainer(cfg, training=True, settings=settings)
    if cfg.get("ckpt"):
        load_checkpoint(cfg.ckpt)  # a clear error before Lightning's own, for a bad path
    trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt"), weights_only=True)
    if not cfg.get("test_after_training", True):
        return {}
    trainer.test(model, datamodule=dm, verbose=False)
    return _report(cfg, trainer, model.test_summaries, out)


def overridden(overrides: list[str], key: str) -> bool:
    """Whether the command line set ``key`` (``key=...``, ``+key=...``)."""
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def resolve_test_datamodule(cfg: DictConfig, ckpt: dict, overrides: list[str] | None = None,
                    **dm_overrides) -> ReIDDataModule:
    """The test datamodule for checkpoint ``ckpt``, checked against what it was trained on.

    Backbone, image size and (RegDB) split come from the checkpoint unless the command line
    overrides them; an explicit backbone that differs, another dataset, another RegDB split or a
    class count that does not fit is refused unless the matching ``eval.allow_*`` switch is on.

    Args:
        cfg: An eval-style config (``dataset``, ``mode``, ``data``, ``eval``, ``ckpt``).
        ckpt: The dict from :func:`tskd.checkpoint.load_checkpoint`.
        overrides: The command line's overrides (Hydra's ``overrides.task``).
        **dm_overrides: Datamodule arguments to force (e.g. one SYSU ``trial`` and ``modes``).
    """
    overrides = list(overrides or [])
    meta = ckpt["tskd"]
    if overridden(overrides, "model.backbone") and cfg.model.backbone != meta["backbone"]:
        raise CheckpointError(
            f"checkpoint {cfg.ckpt} holds a {meta['backbone']} but model.backbone="
            f"{cfg.model.backbone} was asked for; drop the override (the checkpoint's backbone "
            "is used by default)."
        )
    if cfg.dataset.name != meta["dataset"] and not cfg.eval.allow_other_dataset:
        raise CheckpointError(
            f"checkpoint {cfg.ckpt} was trained on {meta['dataset']} but dataset="
            f"{cfg.dataset.name} was asked for; evaluate on {meta['dataset']}, or set "
            "eval.allow_other_dataset=true for a cross-dataset test."
        )
    trial = cfg.dataset.trial
    if cfg.dataset.name == "regdb" and meta["dataset"] == "regdb":
        if not overridden(overrides, "dataset.trial"):
            trial = meta["trial"]
        elif trial != meta["trial"] and not cfg.eval.allow_other_trial:
            raise CheckpointError(
                f"checkpoint {cfg.ckpt} was trained on RegDB split {meta['trial']}; testing it on "
                f"split {trial} uses identities it was trained on. Use dataset.trial="
                f"{meta['trial']} (or eval.allow_other_trial=true to do it anyway)."
            )
    h, w = meta["img_size"]
    if overridden(overrides, "dataset.img_h"):
        h = cfg.dataset.img_h
    if overridden(overrides, "dataset.img_w"):
        w = cfg.dataset.img_w
    dm = build_datamodule(cfg, **{"img_h": h, "img_w": w, "trial": trial, **dm_overrides})
    dm.prepare_data()
    dm.setup("test")
    if cfg.dataset.name == meta["dataset"] and dm.num_classes != meta["num_classes"]:
        raise CheckpointError(
            f"checkpoint {cfg.ckpt} has {meta['num_classes']} classes but {cfg.dataset.name} at "
            f"{cfg.dataset.root} has {dm.num_classes} training identities: it was trained on "
            "another copy or split of the data. Point dataset.root at the data it was trained on."
        )
    return dm


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Test ``cfg.ckpt`` (see :func:`resolve_test_datamodule`); returns metrics.json's dict."""
    ckpt = load_checkpoint(cfg.ckpt)
    dm = resolve_test_datamodule(cfg, ckpt, overrides)
    settings = device_settings(_plain(cfg.trainer))
    module = build_module(ckpt, cfg.ckpt, eval={k: cfg.eval[k] for k in ("flip", "rerank")},
                          channels_last=settings["channels_last"])
    trainer = build_trainer(cfg, training=False, settings=settings)
    trainer.test(module, datamodule=dm, verbose=False)
    return _report(cfg, trainer, module.test_summaries, Path(cfg.paths.output_dir))
