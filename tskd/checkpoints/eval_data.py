"""Which data a checkpoint is tested on: the evaluation's dataset resolution, shared by
``eval.py`` (the runner) and the apps that test a checkpoint (``tskd.apps.visualize``).

The dataset comes from the checkpoint unless the command line names another, and a test that
would not be fair (another dataset, another RegDB split, another backbone) is refused unless
asked for (:func:`eval_dataset`); :func:`resolve_test_datamodule` builds its test-only
datamodule. :func:`build_datamodule` turns a validated run config into a datamodule, for
training and testing alike.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from omegaconf import DictConfig

from tskd.checkpoints.loading import recorded_dataset, require_contents
from tskd.checkpoints.resume import split_datasets
from tskd.config import DatasetConfig, EvalConfig, SupervisionConfig, check_dataset, validate
from tskd.core.errors import CheckpointError, DatasetError
from tskd.core.schema import to_plain
from tskd.data.datamodule import ReIDDataModule

log = logging.getLogger(__name__)


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
        ckpt: The dict from :func:`tskd.checkpoints.loading.load_checkpoint`.
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
    split = split_datasets(d["name"]) if d["name"] == meta["dataset"] else []
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

    The checkpoint's record is a literal path (see :func:`tskd.core.resolvers.literal_config`) and
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
        ckpt: The dict from :func:`tskd.checkpoints.loading.load_checkpoint`.
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


