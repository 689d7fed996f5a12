"""The run's config schema: every key typed, checked at the door, and turned into objects.

Each group is a dataclass (:class:`ModelConfig`, :class:`LossConfig` with its
:class:`GMMConfig`, :class:`OptimConfig`, :class:`SupervisionConfig`, ...; ``dataset`` and
``data`` are the data layer's, :mod:`tskd.data.config`, ``supervision`` its package's,
:mod:`tskd.supervision.config`, and ``trainer`` the Trainer's,
:class:`tskd.core.trainer_config.TrainerConfig`), composed into :class:`TrainConfig`,
:class:`EvalConfig` and (in :mod:`tskd.apps.visualize`) the ranked-list app's schema. A value
and its comment live once, in the YAML; a field holds the type, the check (ranges, and option
sets imported from the modules that own them) and the resume rule (:mod:`tskd.core.schema`).
Adding a key means its YAML value and its field, nothing else.

:func:`validate` checks a composed config against a schema before any data work and raises one
:class:`~tskd.core.errors.ConfigError` listing every problem with its key, value and fix: a wrong
type, a value out of range, an option its owner does not have, a missing key (a default never
lives in code as well), and a key no schema knows (``+loss.md_weight=0.5``), with the closest
known key. Legal but suspicious values are logged as warnings. The schemas are also stored in
Hydra's ConfigStore (``schema_train``, ``schema_eval``, ``schema_visualize``) for tools that
compose against them; the project checks with :func:`validate` rather than at composition,
because Hydra stops at the first problem and names no fix.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

import tskd.core.resolvers  # noqa: F401  (dataset roots interpolate ${tskd.cwd:})
from tskd.core.checks import (
    boolean,
    epochs_list,
    integer,
    number,
    one_of,
    optional,
    specs,
    text,
    weights,
)
from tskd.core.errors import ConfigError
from tskd.core.schema import (
    MAY_DIFFER,
    MUST_MATCH,
    Schema,
    build,
    check_tree,
    group,
    nested,
    plain_tree,
    setting,
)
from tskd.core.trainer_config import TrainerConfig
from tskd.data.config import DataConfig, DatasetConfig, EvalDataConfig, SyntheticConfig
from tskd.data.sysu import GALLERY_CAMS
from tskd.losses.mmd import MD_BANDWIDTHS, MD_FORMS
from tskd.losses.self_mimic import PROTOTYPE_NORMS, SM_FORMS, SM_METRICS
from tskd.models.components.backbone import BACKBONES, LAST_STRIDES
from tskd.models.epoch_passes import GMM_PASSES
from tskd.supervision.config import SupervisionConfig

__all__ = ["DataConfig", "DatasetConfig", "EvalConfig", "EvalDataConfig", "EvalOptions",
           "EvalPassOptions", "GMMConfig", "LossConfig", "ModelConfig", "OptimConfig",
           "SupervisionConfig", "SyntheticConfig", "TrainConfig", "TrainerConfig", "check_dataset",
           "validate", "yaml_values"]

log = logging.getLogger(__name__)



def _configs_folder() -> Path:
    """The YAML configs: the copy an installed package carries (``tskd/configs``, packed from
    the repository's ``configs/`` by pyproject.toml), else the source checkout's ``configs/``
    (an editable install, or the repository on ``PYTHONPATH``)."""
    here = Path(__file__).resolve().parent
    for folder in (here / "configs", here.parent / "configs"):
        if (folder / "train.yaml").is_file():
            return folder
    raise ConfigError(
        f"the YAML configs are missing: neither {here / 'configs'} (an installed tskd) nor "
        f"{here.parent / 'configs'} (a source checkout) holds train.yaml; reinstall tskd "
        "(pip install .) or run from the repository.")


CONFIGS = _configs_folder()


@dataclass(kw_only=True)
class ModelConfig(Schema):
    """``model`` (configs/model): the two-stream network."""

    backbone: str = setting(one_of(tuple(BACKBONES)), resume=MUST_MATCH)
    # only the weights before the first step: a resume replaces them all
    pretrained: bool | str = setting(weights, resume=MAY_DIFFER,
                                     fix="false trains from scratch")
    last_stride: int = setting(one_of(LAST_STRIDES), resume=MUST_MATCH)
    non_local: bool = setting(boolean, resume=MUST_MATCH)
    nl_inter_channels: int | None = setting(optional(integer(1)), resume=MUST_MATCH)
    gem_p: float = setting(number(0, strict=True), resume=MUST_MATCH)
    compile: bool = setting(boolean, resume=MAY_DIFFER)  # how it runs, not what it learns


@dataclass(kw_only=True)
class GMMConfig(Schema):
    """``loss.gmm``: the GaussianMixture fit of the confidences."""

    max_iter: int = setting(integer(1), resume=MUST_MATCH)
    tol: float = setting(number(0, strict=True), resume=MUST_MATCH)
    reg_covar: float = setting(number(0), resume=MUST_MATCH)


@dataclass(kw_only=True)
class LossConfig(Schema):
    """``loss`` (configs/loss): weights, schedule and the switches of each term."""

    sm_w: float = setting(number(0), resume=MUST_MATCH)
    md_w: float = setting(number(0), resume=MUST_MATCH)
    md_start: int = setting(integer(0), resume=MUST_MATCH)
    margin: float = setting(number(0), resume=MUST_MATCH)
    ce_only_epochs: int = setting(integer(0), resume=MUST_MATCH)
    soft_identity: bool = setting(boolean, resume=MUST_MATCH)
    triplet_per_modality: bool = setting(boolean, resume=MUST_MATCH)
    sm_metric: str = setting(one_of(SM_METRICS), resume=MUST_MATCH)
    sm_form: str = setting(one_of(SM_FORMS), resume=MUST_MATCH)
    md_form: str = setting(one_of(MD_FORMS), resume=MUST_MATCH)
    md_bandwidth: str = setting(one_of(MD_BANDWIDTHS), resume=MUST_MATCH)
    prototype_pass: bool = setting(boolean, resume=MUST_MATCH)
    prototype_norm: str = setting(one_of(PROTOTYPE_NORMS), resume=MUST_MATCH)
    gmm_pass: str = setting(one_of(GMM_PASSES), resume=MUST_MATCH)
    gmm: GMMConfig = group()


@dataclass(kw_only=True)
class OptimConfig(Schema):
    """``optim``: SGD and its step schedule with linear warm-up."""

    lr_head: float = setting(number(0, strict=True), resume=MUST_MATCH)
    lr_backbone: float = setting(number(0, strict=True), resume=MUST_MATCH)
    momentum: float = setting(number(0, high=1, high_strict=True), resume=MUST_MATCH)
    nesterov: bool = setting(boolean, resume=MUST_MATCH)
    weight_decay: float = setting(number(0), resume=MUST_MATCH)
    warmup_epochs: int = setting(integer(0), resume=MUST_MATCH)
    milestones: tuple[int, ...] = setting(epochs_list, resume=MUST_MATCH)
    gamma: float = setting(number(0, strict=True, high=1), resume=MUST_MATCH)


@dataclass(kw_only=True)
class ModeConfig(Schema):
    """``mode`` (configs/mode): SYSU-MM01's search mode (which visible cameras form the gallery)."""

    name: str = setting(one_of(tuple(GALLERY_CAMS)), resume=MAY_DIFFER)


@dataclass(kw_only=True)
class EvalPassOptions(Schema):
    """What the module itself needs of ``eval`` (recorded in checkpoints): the flip of its test
    features. Checkpoints before issue 19 also recorded ``rerank``, which the module never read;
    loading drops it (:func:`tskd.checkpoints.loading.module_arguments`)."""

    flip: bool = setting(boolean, resume=MAY_DIFFER)


@dataclass(kw_only=True)
class EvalOptions(EvalPassOptions):
    """``eval`` of eval.yaml: the test options and the two switches of a cross-domain test.
    ``rerank`` is read by the test callback (:class:`tskd.models.protocol_evaluation.
    ProtocolEvaluation`), not by the module."""

    rerank: bool = setting(boolean, resume=MAY_DIFFER)
    allow_other_dataset: bool = setting(boolean, resume=MAY_DIFFER)
    allow_other_trial: bool = setting(boolean, resume=MAY_DIFFER)


@dataclass(kw_only=True)
class TrainEvalConfig(EvalOptions):
    """``eval`` of train.yaml: also the monitoring curve every n epochs."""

    every_n_epochs: int = setting(integer(0), resume=MAY_DIFFER)


@dataclass(kw_only=True)
class PathsConfig(Schema):
    """``paths`` (configs/paths): where data and runs go."""

    data_dir: str = setting(text, resume=MAY_DIFFER)
    log_dir: str = setting(text, resume=MAY_DIFFER)
    output_dir: str = setting(text, resume=MAY_DIFFER)


@dataclass(kw_only=True)
class TrainConfig(Schema):
    """configs/train.yaml composed: what train.py runs."""

    WHAT = "training"

    task_name: str = setting(text, resume=MAY_DIFFER)
    seed: int = setting(integer(0), resume=MUST_MATCH)
    ckpt: str | None = setting(optional(text), resume=MAY_DIFFER)
    test_after_training: bool = setting(boolean, resume=MAY_DIFFER)
    data: DataConfig = group()
    optim: OptimConfig = group()
    eval: TrainEvalConfig = group()
    dataset: DatasetConfig = group()
    model: ModelConfig = group()
    loss: LossConfig = group()
    supervision: SupervisionConfig = group()
    mode: ModeConfig = group()
    trainer: TrainerConfig = group()
    # documented free-form nodes: named _target_ specs Hydra instantiates
    logger: dict[str, Any] | None = setting(specs, resume=MAY_DIFFER)
    callbacks: dict[str, Any] | None = setting(specs, resume=MAY_DIFFER)
    paths: PathsConfig = group()


def _nullable(schema: type, name: str) -> type:
    """``schema`` with every leaf also null: eval.yaml's dataset, filled from the checkpoint."""
    hints, specs_ = typing.get_type_hints(schema), []
    for f in dataclasses.fields(schema):
        meta = dict(f.metadata)
        if nested(hints[f.name])[0] is None:
            meta["check"] = optional(meta["check"])
        specs_.append((f.name, hints[f.name] | None, dataclasses.field(metadata=meta)))
    made = dataclasses.make_dataclass(name, specs_, bases=(Schema,), kw_only=True)
    made.__module__ = __name__
    return made


DatasetChoice = _nullable(DatasetConfig, "DatasetChoice")


@dataclass(kw_only=True)
class EvalConfig(Schema):
    """configs/eval.yaml composed: what eval.py runs (the dataset comes from the checkpoint)."""

    WHAT = "evaluation"

    task_name: str = setting(text, resume=MAY_DIFFER)
    seed: int = setting(integer(0), resume=MAY_DIFFER)
    ckpt: str = setting(text, resume=MAY_DIFFER)
    dataset: DatasetChoice = group()
    data: EvalDataConfig = group()
    eval: EvalOptions = group()
    model: ModelConfig = group()
    mode: ModeConfig = group()
    trainer: TrainerConfig = group()
    paths: PathsConfig = group()


def register(name: str, schema: type) -> None:
    """Store ``schema`` in Hydra's ConfigStore as ``schema_<name>`` (the schema of <name>.yaml).

    (The dataclasses are not frozen: Hydra makes a frozen one a read-only node, which no YAML
    could be merged into.)
    """
    ConfigStore.instance().store(name=f"schema_{name}", node=schema)


register("train", TrainConfig)
register("eval", EvalConfig)


def validate(cfg: DictConfig | Mapping, schema: type = TrainConfig):
    """The composed ``cfg`` as typed objects of ``schema``, or every problem at once.

    Raises:
        ConfigError: ``invalid <what> config, nothing was run: <key>=<value> must be <what it
            must be> (set <key>=<value>; <hint>); ...``, one entry per problem.
    """
    tree = plain_tree(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    problems, warnings = check_tree(schema, tree)
    if problems:
        raise ConfigError(f"invalid {schema.WHAT or 'run'} config, nothing was run: "
                          + "; ".join(problems) + ".")
    for message in warnings:
        log.warning(message)
    typed = build(schema, tree)
    if isinstance(typed, TrainConfig):
        warn_suspicious(typed)
    return typed


def check_dataset(node: Mapping) -> DatasetConfig:
    """A resolved dataset node (evaluation: the checkpoint's, with the command line's keys)."""
    return DatasetConfig.of(plain_tree(node) if isinstance(node, DictConfig) else dict(node),
                            "dataset")


def warn_suspicious(c: TrainConfig) -> None:
    """Log values that are legal but rarely meant."""
    loss, optim = c.loss, c.optim
    if loss.md_w > 1:
        log.warning("loss.md_w=%s is above 1; the paper uses 0.05 (the MD term is large at the "
                    "code's magnitude). Legal, but check it is meant.", loss.md_w)
    if loss.sm_w > 10:
        log.warning("loss.sm_w=%s is far above the paper's 1. Legal, but check it is meant.",
                    loss.sm_w)
    if optim.lr_head > 1 or optim.lr_backbone > 1:
        log.warning("optim.lr_head=%s / optim.lr_backbone=%s: an SGD rate above 1 usually "
                    "diverges (the paper: 0.1 / 0.01).", optim.lr_head, optim.lr_backbone)
    if loss.md_start < loss.ce_only_epochs:
        log.warning("loss.md_start=%s is before the CE-only warm-up ends (loss.ce_only_epochs=%s):"
                    " MD starts while the GMM confidences are still off.", loss.md_start,
                    loss.ce_only_epochs)
    if c.data.num_ids < 2:
        log.warning("data.num_ids=1: a batch holds one identity, so the triplet loss has no "
                    "negatives; the paper uses 6-8.")


def yaml_values(path: str, node: str | None = None) -> dict:
    """The literal values of configs/``path`` (its ``node``), interpolated ones left out."""
    tree = OmegaConf.to_container(OmegaConf.load(CONFIGS / path), resolve=False)
    tree = tree[node] if node else tree
    tree.pop("defaults", None)
    return {k: v for k, v in tree.items() if not (isinstance(v, str) and "${" in v)}
