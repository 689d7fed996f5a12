"""What train.py and eval.py do: build everything from a Hydra config, run, write results.

Kept out of the entry scripts so tests (and users' own scripts) can call :func:`train` and
:func:`evaluate` with a composed config.

Both start with checks that need no data: the config against its schema, which turns it into
typed objects (:func:`tskd.config.validate`), a resumed checkpoint against the run's settings
(:func:`check_resume`), the ImageNet weights (training), and for evaluation the dataset the
checkpoint was trained on (:func:`eval_dataset`). Only then are data read and caches built.
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

from tskd.checkpoint import build_module, load_checkpoint, recorded_dataset, require_contents
from tskd.config import (
    DatasetConfig,
    EvalConfig,
    GMMConfig,
    SupervisionConfig,
    TrainConfig,
    check_dataset,
    validate,
)
from tskd.data import registry
from tskd.data.datamodule import ReIDDataModule
from tskd.errors import CheckpointError, DatasetError
from tskd.files import check_output_folders
from tskd.models.components.pretrained import require_weights
from tskd.models.epoch_passes import epoch_pass_callbacks
from tskd.models.protocol_evaluation import ProtocolEvaluation
from tskd.models.pseudo_label_pass import PseudoLabelPass
from tskd.models.supervision_monitor import SupervisionMonitor
from tskd.models.tskd_module import TSKDModule
from tskd.results import describe_test_data, format_table, write_metrics_json
from tskd.schema import ABSENT, differences, to_plain
from tskd.trainer import build_trainer, device_settings

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


def build_datamodule(c, dataset: DatasetConfig | None = None, *, test_only: bool = False,
                     devices: int = 1, supervision: SupervisionConfig | None = None,
                     **overrides) -> ReIDDataModule:
    """The datamodule of ``dataset`` (default ``c.dataset``), ``c.data``, ``c.mode``, ``c.seed``.

    Args:
        c: The validated run config (:class:`~tskd.config.TrainConfig`, or an evaluation's).
        dataset: A resolved dataset to use instead of ``c.dataset`` (evaluation).
        test_only: Build and read only the test images.
        devices: Processes sharing this machine's CPUs (for ``data.num_workers=auto``).
        supervision: Which training labels the passes serve (None: full).
        **overrides: Dataset keys to force (e.g. one SYSU ``trial``, ``settings``).
    """
    d = dataclasses.replace(dataset if dataset is not None else c.dataset, **overrides)
    return ReIDDataModule(d, c.data, mode=c.mode.name, seed=c.seed, devices=devices,
                          test_only=test_only, supervision=supervision)


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


# ------------------------------------------------------------------------------- resume
# Why a mismatch matters, where the generic "must match" is not enough ({title}: the dataset's).
_RESUME_WHY = {
    "dataset.trial": " (another {title} split puts that split's test identities into training)",
}


def _split_datasets(*names) -> list:
    """The protocols among ``names`` whose trial selects the training data (RegDB's splits)."""
    known = [registry.get(n) for n in names if n in registry.names()]
    return [p for p in known if p.trial_selects_training]


def _recorded_config(ckpt: dict) -> dict:
    """The run config a checkpoint records (older ones: the module's own arguments)."""
    hp = ckpt.get("hyper_parameters", {})
    if hp.get("config"):
        return hp["config"]
    return {k: hp[k] for k in ("dataset", "model", "loss", "optim") if k in hp}


def check_resume(cfg, ckpt: dict, path: str, schema: type = TrainConfig) -> None:
    """Refuse to resume ``ckpt`` under settings other than those it was trained with.

    A resumed run continues the same optimisation (same sampler draws, same schedule) and
    reports it as one run, so everything that decides what the model learns must match the
    checkpoint's recorded config. Which keys those are is the schema's resume rule, a field's
    metadata (:mod:`tskd.config`); the training data's counts are checked too
    (:func:`check_resume_data`). Keys the checkpoint does not record are not checked.

    Args:
        cfg: The run config (composed or validated).
        ckpt: The dict from :func:`tskd.checkpoint.load_checkpoint`.
        path: Its file, for messages.
        schema: The schema whose rules apply.

    Raises:
        CheckpointError: Naming each key, the checkpoint's value, this run's value and the fix.
    """
    then_cfg = _recorded_config(ckpt)
    now_cfg = _plain(cfg) if isinstance(cfg, DictConfig) else to_plain(cfg)
    split = _split_datasets(now_cfg["dataset"]["name"],
                            (then_cfg.get("dataset") or {}).get("name"))
    diffs = []
    for k, was, now in differences(schema, then_cfg, now_cfg, split=bool(split)):
        shown = "<missing>" if now is ABSENT else repr(now)
        why = _RESUME_WHY.get(k, "").format(title=split[0].title if split else "")
        diffs.append(f"{k}={shown} but the checkpoint was trained with {k}={was!r}" + why)
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: " + "; ".join(diffs) + ". Resume with the checkpoint's "
            "settings (drop those overrides or set them to its values), or start a new run "
            "without ckpt=."
        )


def check_resume_data(dm: ReIDDataModule, ckpt: dict, path: str) -> None:
    """The training lists at ``dataset.root`` are the ones the checkpoint learnt (no caching)."""
    hp = ckpt.get("hyper_parameters", {})
    now = dm.train_label_counts()
    wrong = [f"{k} {now[k]} vs {hp[k]}" for k in ("num_classes", "num_visible", "num_infrared")
             if k in hp and now[k] != hp[k]]
    if wrong:
        raise CheckpointError(
            f"cannot resume from {path}: the training data at dataset.root={dm.root} is not the "
            f"data it was trained on (here vs checkpoint: {', '.join(wrong)}). Point "
            "dataset.root at that data, or start a new run without ckpt=."
        )


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


# ----------------------------------------------------------------------------- evaluate
def overridden(overrides: list[str], key: str) -> bool:
    """Whether the command line set ``key`` (``key=...``, ``+key=...``)."""
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def eval_dataset(cfg, ckpt: dict, overrides: list[str] | None = None) -> DatasetConfig:
    """The dataset to test ``ckpt`` on, refused where it would not be a fair test.

    With no ``dataset=...`` on the command line (``cfg.dataset.name`` null, eval.yaml's
    default) it is the checkpoint's own dataset node: name, root, RegDB split, image size,
    shots, cache folder. Command-line ``dataset.*`` keys replace single values
    (``dataset.root=<new place>`` for data that was moved). With ``dataset=<option>`` that node
    is used, with the checkpoint's image size and RegDB split unless the command line sets them.

    Refused (:class:`CheckpointError`) unless the matching switch is on: another dataset
    (``eval.allow_other_dataset``), another RegDB split (``eval.allow_other_trial``); always: an
    explicit ``model.backbone`` other than the checkpoint's.

    Args:
        cfg: A validated evaluation config (:class:`~tskd.config.EvalConfig` or an app's
            extension of it); a composed eval.yaml is validated first.
        ckpt: The dict from :func:`tskd.checkpoint.load_checkpoint`.
        overrides: The command line's overrides (Hydra's ``overrides.task``); in-process
            callers may omit it, non-null ``dataset.*`` values count as given.

    Returns:
        The dataset, checked (:func:`tskd.config.check_dataset`).
    """
    if isinstance(cfg, DictConfig):
        cfg = validate(cfg, EvalConfig)
    overrides = list(overrides or [])
    meta = require_contents(ckpt, cfg.ckpt)
    if overridden(overrides, "model.backbone") and cfg.model.backbone != meta["backbone"]:
        raise CheckpointError(
            f"checkpoint {cfg.ckpt} holds a {meta['backbone']} but model.backbone="
            f"{cfg.model.backbone} was asked for; drop the override (the checkpoint's backbone "
            "is used by default)."
        )
    given = to_plain(cfg.dataset)
    if given["name"] is None:  # no dataset=...: the checkpoint's, single keys replaced
        d = recorded_dataset(ckpt)
        explicit = {k for k, v in given.items()
                    if v is not None or overridden(overrides, f"dataset.{k}")}
        d.update({k: given[k] for k in explicit})
        source = "the checkpoint"
    else:
        d = dict(given)
        explicit = {k for k in d if overridden(overrides, f"dataset.{k}")}
        source = "dataset=..."
    if d["name"] != meta["dataset"] and not cfg.eval.allow_other_dataset:
        raise CheckpointError(
            f"checkpoint {cfg.ckpt} was trained on {meta['dataset']} but dataset="
            f"{d['name']} was asked for; evaluate on {meta['dataset']} (drop the dataset "
            "override: the checkpoint's dataset is the default), or set "
            "eval.allow_other_dataset=true for a cross-dataset test."
        )
    split = _split_datasets(d["name"]) if d["name"] == meta["dataset"] else []
    if split:  # the trial is the training split: the checkpoint's, unless asked otherwise
        if "trial" not in explicit:
            d["trial"] = meta["trial"]
        elif d["trial"] != meta["trial"] and not cfg.eval.allow_other_trial:
            raise CheckpointError(
                f"checkpoint {cfg.ckpt} was trained on {split[0].title} split {meta['trial']}; "
                f"testing it on "
                f"split {d['trial']} uses identities it was trained on. Use dataset.trial="
                f"{meta['trial']} (or eval.allow_other_trial=true to do it anyway)."
            )
    if source == "the checkpoint" and "root" not in explicit:
        _recorded_root_only(d, cfg.ckpt)
    h, w = meta["img_size"]
    d["img_h"] = d["img_h"] if "img_h" in explicit else h
    d["img_w"] = d["img_w"] if "img_w" in explicit else w
    dataset = check_dataset(d)
    log.info("evaluating on %s at %s (%s), %dx%d, trial %s", d["name"], d["root"], source,
             d["img_h"], d["img_w"], d["trial"])
    return dataset


def _recorded_root_only(d: dict, ckpt_path: str) -> None:
    """A root read from a checkpoint is where the data is, or an error; never generated there.

    The checkpoint's record is a literal path (see :func:`tskd.resolvers.literal_config`) and
    may come from another machine or another hand; a synthetic set is generated only where the
    command line's ``dataset.root`` (or ``dataset=...``) says.
    """
    d["synthetic"] = None
    if not Path(str(d["root"])).is_dir():
        raise DatasetError(
            f"dataset.root={d['root']!r}, recorded in checkpoint {ckpt_path}, is not a folder "
            "here; pass dataset.root=<the data's folder> (eval generates no data at a root "
            "read from a checkpoint)."
        )


def resolve_test_datamodule(cfg, ckpt: dict, overrides: list[str] | None = None,
                            devices: int = 1, dataset: DatasetConfig | None = None,
                            **dm_overrides) -> ReIDDataModule:
    """The test-only datamodule for checkpoint ``ckpt`` (see :func:`eval_dataset`), set up.

    The training lists are read for their class count, which must be the checkpoint's (another
    copy or split of the data otherwise); only the test images are cached.

    Args:
        cfg: A validated evaluation config.
        ckpt: The dict from :func:`tskd.checkpoint.load_checkpoint`.
        overrides: The command line's overrides.
        devices: Processes sharing this machine's CPUs (``data.num_workers=auto``).
        dataset: :func:`eval_dataset`'s result when the caller has it already (not checked
            again).
        **dm_overrides: Dataset keys to force (e.g. one SYSU ``trial`` and ``settings``).
    """
    meta = ckpt["tskd"]
    d = dataset if dataset is not None else eval_dataset(cfg, ckpt, overrides)
    dm = build_datamodule(cfg, d, test_only=True, devices=devices, **dm_overrides)
    if dm.name == meta["dataset"]:
        found = dm.train_label_counts()["num_classes"]  # the lists only: refused before caching
        if found != meta["num_classes"]:
            raise CheckpointError(
                f"checkpoint {cfg.ckpt} has {meta['num_classes']} classes but {dm.name} at "
                f"{dm.root} has {found} training identities: it was trained on another copy or "
                "split of the data. Point dataset.root at the data it was trained on."
            )
    dm.prepare_data()
    dm.setup("test")
    return dm


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Test ``cfg.ckpt`` (see :func:`eval_dataset`); returns metrics.json's dict."""
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
