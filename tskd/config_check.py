"""One validation step at the start of a run: every config value that matters, checked at once.

A wrong value typed on the command line (``loss.md_w=abc``, ``optim.lr_head=-0.1``,
``loss.md_form=papr``) used to be accepted and fail much later, often hours into training with
a cryptic ``TypeError``, or never fail at all. :func:`check_train_config` and
:func:`check_eval_config` run before any data work and refuse the config with one
:class:`ConfigError` that lists every bad key, its value and the fix. Values that are legal but
suspicious (an ``md_w`` above 1) are logged as warnings.

A key missing from the config fails here too: the rule is that every default lives once, in
the YAML (or in one function signature), never as a second fallback number in code.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

import tskd.resolvers  # noqa: F401  (dataset roots interpolate ${tskd.cwd:})
from tskd.data import registry
from tskd.data.datamodule import MAX_AUTO_WORKERS
from tskd.errors import ConfigError, DatasetError
from tskd.resolvers import literal_config

log = logging.getLogger(__name__)


__all__ = ["ConfigError", "check_dataset", "check_eval_config", "check_train_config"]

_MISSING = object()

# A check returns None when the value is fine, else what the value must be (for the message).
Check = Callable[[Any], "str | None"]


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def number(low: float | None = None, *, strict: bool = False, high: float | None = None,
           high_strict: bool = False) -> Check:
    """A real number (not a bool, not a string) within the bounds."""
    def check(v):
        lo = "" if low is None else f"{'>' if strict else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_strict else '<='} {high}"
        want = "a number " + " and ".join(x for x in (lo, hi) if x)
        if not _is_number(v):
            return want.strip()
        if low is not None and (v <= low if strict else v < low):
            return want.strip()
        if high is not None and (v >= high if high_strict else v > high):
            return want.strip()
        return None
    return check


def integer(low: int | None = None, high: int | None = None) -> Check:
    """A whole number within ``[low, high]``."""
    def check(v):
        bounds = " and ".join(x for x in (f">= {low}" if low is not None else "",
                                          f"<= {high}" if high is not None else "") if x)
        want = f"a whole number {bounds}".strip()
        if not _is_int(v) or (low is not None and v < low) or (high is not None and v > high):
            return want
        return None
    return check


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def one_of(*allowed) -> Check:
    def check(v):
        return None if v in allowed and not isinstance(v, bool) else \
            "one of " + "|".join(str(a) for a in allowed)
    return check


def optional(inner: Check) -> Check:
    """``inner`` or null."""
    def check(v):
        if v is None:
            return None
        problem = inner(v)
        return None if problem is None else f"{problem} or null"
    return check


def text(v) -> str | None:
    return None if isinstance(v, str) and v else "a non-empty string"


def epochs_list(v) -> str | None:
    ok = isinstance(v, list | tuple) and all(_is_int(x) and x >= 0 for x in v)
    if ok and list(v) == sorted(v):
        return None
    return "a list of increasing whole epoch numbers >= 0, e.g. [20,40]"


def workers(v) -> str | None:
    if v == "auto" or (_is_int(v) and v >= 0):
        return None
    return "auto or a whole number >= 0"


def pretrained(v) -> str | None:
    return None if isinstance(v, bool) or (isinstance(v, str) and v) else \
        "true, false or the path of a weights file"


def synthetic(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, Mapping) and v.get("layout") in ("sysu", "regdb", "llcm") \
            and _is_int(v.get("seed", 0)):
        return None
    return "null or {layout: sysu|regdb|llcm, seed: <int>}"


def dataset_name(v) -> str | None:
    """A registered dataset (read when checked, so a dataset registered at run time counts)."""
    names = registry.names()
    return None if v in names else f"one of {names}"


# Hints that say more than "must be X" for the keys people most often get wrong.
_FIXES = {
    "data.num_workers": "auto uses the CPUs of this process (at most "
                        f"{MAX_AUTO_WORKERS} per device)",
    "model.pretrained": "false trains from scratch",
    "dataset.trial": "RegDB: the split 1..10; SYSU-MM01, LLCM: the gallery trial 0..9, or null "
                     "for all",
}

DATASET_KEYS: dict[str, Check] = {
    "dataset.name": dataset_name,
    "dataset.root": text,
    "dataset.img_h": integer(16),  # the network downsamples by 16
    "dataset.img_w": integer(16),
    "dataset.trial": optional(integer(0, 10)),
    "dataset.shots": integer(1),
    "dataset.cache_dir": optional(text),
    "dataset.synthetic": synthetic,
}

TRAIN_KEYS: dict[str, Check] = {
    "seed": integer(0),
    "ckpt": optional(text),
    "test_after_training": boolean,
    "mode.name": one_of("all", "indoor"),
    **DATASET_KEYS,
    "model.backbone": one_of("resnet18", "resnet34", "resnet50"),
    "model.pretrained": pretrained,
    "model.last_stride": one_of(1, 2),
    "model.non_local": boolean,
    "model.nl_inter_channels": optional(integer(1)),
    "model.gem_p": number(0, strict=True),
    "model.compile": boolean,
    "loss.sm_w": number(0),
    "loss.md_w": number(0),
    "loss.md_start": integer(0),
    "loss.margin": number(0),
    "loss.ce_only_epochs": integer(0),
    "loss.soft_identity": boolean,
    "loss.triplet_per_modality": boolean,
    "loss.sm_metric": one_of("l1", "l2"),
    "loss.sm_form": one_of("code", "mean"),
    "loss.md_form": one_of("code", "paper"),
    "loss.md_bandwidth": one_of("offdiag", "all"),
    "loss.prototype_pass": boolean,
    "loss.prototype_norm": one_of("count", "weight"),
    "loss.gmm_pass": one_of("train", "eval"),
    "loss.gmm.max_iter": integer(1),
    "loss.gmm.tol": number(0, strict=True),
    "loss.gmm.reg_covar": number(0),
    "optim.lr_head": number(0, strict=True),
    "optim.lr_backbone": number(0, strict=True),
    "optim.momentum": number(0, high=1, high_strict=True),
    "optim.nesterov": boolean,
    "optim.weight_decay": number(0),
    "optim.warmup_epochs": integer(0),
    "optim.milestones": epochs_list,
    "optim.gamma": number(0, strict=True, high=1),
    "data.num_ids": integer(1),
    "data.num_pos": integer(1),
    "data.num_workers": workers,
    "data.test_batch_size": integer(1),
    "data.pad": integer(0),
    "data.erasing_p": number(0, high=1),
    "data.gray_p": number(0, high=1),
    "data.gray_draw": one_of("caj", "gated"),
    "data.channel_exchange": boolean,
    "eval.flip": boolean,
    "eval.rerank": boolean,
    "eval.every_n_epochs": integer(0),
    "eval.allow_other_dataset": boolean,
    "eval.allow_other_trial": boolean,
    "trainer.max_epochs": integer(1),
}

# Evaluation reads the dataset from the checkpoint: its node is checked once resolved
# (:func:`check_dataset`), here only the keys eval.yaml itself defines.
EVAL_KEYS: dict[str, Check] = {
    "ckpt": text,
    "mode.name": one_of("all", "indoor"),
    "model.backbone": one_of("resnet18", "resnet34", "resnet50"),
    "data.num_workers": workers,
    "data.test_batch_size": integer(1),
    "eval.flip": boolean,
    "eval.rerank": boolean,
    "eval.allow_other_dataset": boolean,
    "eval.allow_other_trial": boolean,
}


def _lookup(cfg: DictConfig, key: str):
    """The resolved value at dotted ``key`` (plain Python), or ``_MISSING``."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig | Mapping) or part not in node:
            return _MISSING
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, part):
            return _MISSING
        node = node[part]
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _problems(cfg: DictConfig, keys: dict[str, Check]) -> list[str]:
    problems = []
    for key, check in keys.items():
        value = _lookup(cfg, key)
        if value is _MISSING:
            problems.append(f"{key} is missing from the config (put it back in the YAML, or set "
                            f"it: {key}=...)")
            continue
        want = check(value)
        if want is not None:
            fix = f"; {_FIXES[key]}" if key in _FIXES else ""
            problems.append(f"{key}={value!r} must be {want} (set {key}=<value>{fix})")
    return problems


def _raise(problems: list[str], what: str) -> None:
    if problems:
        raise ConfigError(f"invalid {what} config, nothing was run: " + "; ".join(problems) + ".")


def _warn_suspicious(cfg: DictConfig) -> None:
    loss = cfg.loss
    if loss.md_w > 1:
        log.warning("loss.md_w=%s is above 1; the paper uses 0.05 (the MD term is large at the "
                    "code's magnitude). Legal, but check it is meant.", loss.md_w)
    if loss.sm_w > 10:
        log.warning("loss.sm_w=%s is far above the paper's 1. Legal, but check it is meant.",
                    loss.sm_w)
    if cfg.optim.lr_head > 1 or cfg.optim.lr_backbone > 1:
        log.warning("optim.lr_head=%s / optim.lr_backbone=%s: an SGD rate above 1 usually "
                    "diverges (the paper: 0.1 / 0.01).", cfg.optim.lr_head, cfg.optim.lr_backbone)
    if loss.md_start < loss.ce_only_epochs:
        log.warning("loss.md_start=%s is before the CE-only warm-up ends (loss.ce_only_epochs=%s):"
                    " MD starts while the GMM confidences are still off.", loss.md_start,
                    loss.ce_only_epochs)
    if cfg.data.num_ids < 2:
        log.warning("data.num_ids=1: a batch holds one identity, so the triplet loss has no "
                    "negatives; the paper uses 6-8.")


def check_dataset(cfg: DictConfig, dataset: DictConfig | None = None) -> None:
    """Check a dataset node (``cfg.dataset`` by default), including the protocol's trial range."""
    d = dataset if dataset is not None else cfg.dataset
    # resolved while still attached: its root interpolates ${paths.data_dir}
    plain = OmegaConf.to_container(d, resolve=True) if isinstance(d, DictConfig) else dict(d)
    node = literal_config({"dataset": plain})  # resolved or recorded: strings are data
    problems = _problems(node, DATASET_KEYS)
    d = node.dataset
    if not problems:  # the dataset's own trial range and settings
        spec = registry.get(d.name)
        first, last = spec.trials.start, spec.trials.stop - 1
        if spec.trial_selects_training and d.trial not in spec.trials:
            problems.append(f"dataset.trial={d.trial!r} must be a {spec.title} split "
                            f"{first}..{last} (set dataset.trial=<{first}..{last}>)")
        elif d.trial is not None and d.trial not in spec.trials:
            problems.append(f"dataset.trial={d.trial!r} must be a {spec.title} gallery trial "
                            f"{first}..{last} or null for all of them (set dataset.trial="
                            f"<{first}..{last}> or dataset.trial=null)")
        settings = d.get("settings")
        if settings is not None:
            try:
                spec.resolve_settings(list(settings), "all")
            except DatasetError:
                problems.append(f"dataset.settings={list(settings)!r} must list settings of "
                                f"{spec.title}: {list(spec.settings)} (or be null)")
    _raise(problems, "dataset")


def check_train_config(cfg: DictConfig) -> None:
    """Refuse a training config with a bad or missing value; warn on suspicious ones.

    Raises:
        ConfigError: Listing every bad key with its value and the fix.
    """
    problems = _problems(cfg, TRAIN_KEYS)
    _raise(problems, "training")
    check_dataset(cfg)
    _warn_suspicious(cfg)


def check_eval_config(cfg: DictConfig) -> None:
    """Refuse an evaluation config with a bad or missing value (dataset: see check_dataset).

    Raises:
        ConfigError: Listing every bad key with its value and the fix.
    """
    _raise(_problems(cfg, EVAL_KEYS), "evaluation")
