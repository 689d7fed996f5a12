"""When a run may resume a checkpoint: the policy ``train.py ckpt=...`` applies before any data
work, kept here (not in the runner) so every tool that reads a checkpoint can apply it too.

The keys that must match are the schema's resume rule, each field's metadata (:mod:`tskd.config`);
this module only compares the checkpoint's recorded config with the run's and says what differs.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tskd.config import TrainConfig
from tskd.core.errors import CheckpointError
from tskd.core.schema import ABSENT, differences, to_plain
from tskd.data import registry
from tskd.data.datamodule import ReIDDataModule


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


# Why a mismatch matters, where the generic "must match" is not enough ({title}: the dataset's).
_RESUME_WHY = {
    "dataset.trial": " (another {title} split puts that split's test identities into training)",
}


def split_datasets(*names) -> list:
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
        ckpt: The dict from :func:`tskd.checkpoints.loading.load_checkpoint`.
        path: Its file, for messages.
        schema: The schema whose rules apply.

    Raises:
        CheckpointError: Naming each key, the checkpoint's value, this run's value and the fix.
    """
    then_cfg = _recorded_config(ckpt)
    now_cfg = _plain(cfg) if isinstance(cfg, DictConfig) else to_plain(cfg)
    split = split_datasets(now_cfg["dataset"]["name"],
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


