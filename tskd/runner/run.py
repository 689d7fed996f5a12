"""What train.py and eval.py do: build everything from a Hydra config, run, write results.

Kept out of the entry scripts so tests (and users' own scripts) can call :func:`train` and
:func:`evaluate_checkpoint` with a composed config.

Both start with checks that need no data: the config against its schema, which turns it into
typed objects (:func:`tskd.config.validate`), a resumed checkpoint against the run's settings
(:func:`tskd.checkpoints.resume.check_resume`), the ImageNet weights (training), and for
evaluation the dataset the checkpoint was trained on
(:func:`tskd.checkpoints.eval_data.eval_dataset`). Only then are data read and caches built.
"""

from __future__ import annotations

import dataclasses
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

from tskd.checkpoints.eval_data import build_datamodule, resolve_test_datamodule
from tskd.checkpoints.loading import build_module, load_checkpoint
from tskd.checkpoints.resume import check_resume, check_resume_data
from tskd.config import EvalConfig, GMMConfig, SupervisionConfig, TrainConfig, validate
from tskd.core.files import check_output_folders
from tskd.data.datamodule import ReIDDataModule
from tskd.models.components.pretrained import require_weights
from tskd.models.epoch_passes import epoch_pass_callbacks
from tskd.models.protocol_evaluation import ProtocolEvaluation
from tskd.models.pseudo_label_pass import PseudoLabelPass
from tskd.models.supervision_monitor import SupervisionMonitor
from tskd.models.tskd_module import TSKDModule
from tskd.runner.metrics_file import describe_test_data, format_table, write_metrics_json
from tskd.runner.trainer import build_trainer, device_settings

log = logging.getLogger(__name__)


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def local_devices(settings: dict) -> int:
    """Processes on this machine for resolved trainer ``settings`` (they share its CPUs)."""
    devices = settings["devices"]
    if isinstance(devices, list | tuple):
        return max(1, len(devices))
    if isinstance(devices, str):
        ids = [x for x in devices.split(",") if x.strip()]
        if len(ids) > 1 or not devices.strip().lstrip("-").isdigit():
            return max(1, len(ids))
        devices = int(devices)
    if devices == -1:  # Lightning: every device of the accelerator
        gpu = settings["accelerator"] in ("gpu", "cuda")
        return max(1, torch.cuda.device_count()) if gpu else 1
    return max(1, int(devices))


def supervision_trainer_settings(settings: dict, supervision: SupervisionConfig) -> dict:
    """Trainer settings weak supervision adds: its pre-training epochs come on top of
    ``trainer.max_epochs`` (the main run keeps its schedule), and the training loader is rebuilt
    every epoch so its sampler sees the new pseudo-labels and the epoch length follows the
    labelled images. Nothing for full and noisy labels."""
    if supervision.name != "weak":
        return {}
    return {"max_epochs": settings["max_epochs"] + supervision.pretrain_epochs,
            "reload_dataloaders_every_n_epochs": 1}


def supervision_callbacks(dm: ReIDDataModule, supervision: SupervisionConfig, confidence_pass,
                          out: Path, gmm: GMMConfig) -> list[pl.Callback]:
    """The pseudo-label pass and the diagnostics of a noisy or weak run (none for full).

    They come after the per-epoch passes: the prototype pass replays the epoch's slots under
    the labels they were drawn with, so new pseudo-labels are made only after it.
    """
    if supervision.name == "full":
        return []
    monitor = SupervisionMonitor(dm, out, confidence_pass,
                                 labelled_weight_one=supervision.labelled_weight_one,
                                 plot_epochs=supervision.plot_epochs, gmm=dataclasses.asdict(gmm))
    return [PseudoLabelPass(dm, supervision.refresh_every), monitor]


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



def _report(cfg, trainer: pl.Trainer, summaries: list[dict], out: Path,
            dm: ReIDDataModule, provenance: dict) -> dict:
    """Write metrics.json (with ``provenance``: checkpoint, image size, data root) and print.

    The top-level summary is the first tested setting: SYSU's ``mode``, RegDB's
    visible2thermal, LLCM's infrared2visible (each dataset's default order).
    """
    options = {"flip": bool(cfg.eval.flip), "rerank": bool(cfg.eval.rerank)}
    if not trainer.is_global_zero:
        return {}
    # provenance: which model and inputs produced the numbers (issue 11), and on which test
    # lists (issue 20: counts, identities, hash)
    test_data = describe_test_data(dm.protocol, dm.root)
    result = write_metrics_json(out / "metrics.json", summaries, dm.settings[0], options,
                                extra={**provenance, "test_data": test_data})
    print(format_table(summaries, options, test_data))  # the entry point's output, rank 0 only
    return result


def _is_local_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def train(cfg: DictConfig) -> dict:
    """Train, save ``checkpoints/last.ckpt``, test the last epoch; returns metrics.json's dict.

    Before any data work: the config is validated into typed objects (every bad, missing or
    unknown key at once), a resumed checkpoint is read (a file that is not a tskd checkpoint is
    refused) and checked against the settings (:func:`check_resume`), and the ImageNet weights
    ``model.pretrained`` asks for must be at hand (a run without network access stops in
    seconds, not after the caches are built).
    """
    c = validate(cfg, TrainConfig)
    check_output_folders(cfg)  # a run must not train an epoch and then fail to save it
    resumed = load_checkpoint(c.ckpt) if c.ckpt else None
    if resumed is not None:
        check_resume(cfg, resumed, c.ckpt)
    require_weights(c.model.pretrained, c.model.backbone)
    out = Path(c.paths.output_dir)
    if _is_local_zero():
        write_run_info(out)
        log.info("run dir: %s", out)
    pl.seed_everything(c.seed, workers=True)
    # the trainer node as composed: Lightning arguments passed through are kept
    settings = device_settings(_plain(cfg.trainer))
    settings.update(supervision_trainer_settings(settings, c.supervision))
    dm = build_datamodule(c, devices=local_devices(settings), supervision=c.supervision)
    if resumed is not None:
        check_resume_data(dm, resumed, c.ckpt)
    if _is_local_zero():
        dm.prepare_data()  # data and caches exist before DDP ranks start reading them
    dm.setup("fit")
    model = TSKDModule(
        num_classes=dm.num_classes, num_visible=len(dm.visible_labels),
        num_infrared=len(dm.infrared_labels), dataset=c.dataset, model=c.model, loss=c.loss,
        optim=c.optim, eval=c.eval, channels_last=settings["channels_last"], config=_plain(cfg),
        supervision=c.supervision,
    )
    if c.dataset.synthetic is None and not c.model.pretrained:
        log.warning("training on real data from random init (model.pretrained=false); the "
                    "paper's numbers need ImageNet weights: model.pretrained=true or a file path")
    evaluation = ProtocolEvaluation(dm.protocol, rerank=c.eval.rerank)
    passes = epoch_pass_callbacks(dm)
    trainer = build_trainer(cfg, training=True, settings=settings,
                            components=[*passes, *supervision_callbacks(dm, c.supervision,
                                                                        passes[0], out, c.loss.gmm),
                                        evaluation])
    trainer.fit(model, datamodule=dm, ckpt_path=c.ckpt, weights_only=True)
    if not c.test_after_training:
        return {}
    trainer.test(model, datamodule=dm, verbose=False)
    return _report(c, trainer, evaluation.result(), out, dm,
                   {"checkpoint": _tested_checkpoint(trainer, c.ckpt, resumed),
                    "img_size": list(dm.size), "data_root": str(Path(dm.root).resolve())})


def _tested_checkpoint(trainer: pl.Trainer, ckpt: str | None, resumed: dict | None) -> str | None:
    """The file that holds the weights the test used.

    This run's last save; but a resume that trained no step (``trainer.max_epochs`` reached
    already) saved nothing and tested the file it resumed from, while the checkpoint callback
    still names the original run's ``last.ckpt`` (restored from the checkpoint).
    """
    if resumed is not None and trainer.global_step == resumed.get("global_step"):
        return str(Path(ckpt).resolve())
    last = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    return str(Path(last).resolve()) if last else None


def evaluate_checkpoint(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Test ``cfg.ckpt`` (see :func:`tskd.checkpoints.eval_data.eval_dataset`); returns
    metrics.json's dict."""
    c = validate(cfg, EvalConfig)
    ckpt = load_checkpoint(c.ckpt)
    settings = device_settings(_plain(cfg.trainer))
    dm = resolve_test_datamodule(c, ckpt, overrides, devices=local_devices(settings))
    module = build_module(ckpt, c.ckpt, eval=c.eval, channels_last=settings["channels_last"])
    evaluation = ProtocolEvaluation(dm.protocol, rerank=c.eval.rerank)
    trainer = build_trainer(cfg, training=False, settings=settings, components=[evaluation])
    trainer.test(module, datamodule=dm, verbose=False)
    return _report(c, trainer, evaluation.result(), Path(c.paths.output_dir), dm,
                   {"checkpoint": str(Path(c.ckpt).resolve()), "img_size": list(dm.size),
                    "data_root": str(Path(dm.root).resolve())})
