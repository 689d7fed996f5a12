"""The schema of the ``supervision`` config group (configs/supervision/*.yaml).

Owned by the supervision package, beside its option sets (:mod:`tskd.supervision.modes`), so
the datamodule can take it as a typed argument without the data layer importing the model
layer; :mod:`tskd.config` composes it into the run's schema. Every key but ``plot_epochs``
changes which labels the run learns from, so a resume must keep it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tskd.core.checks import boolean, epochs_set, integer, number, one_of, optional, text
from tskd.core.schema import MAY_DIFFER, MUST_MATCH, Schema, setting
from tskd.supervision.modes import LABEL_SPLITS, SUPERVISION_MODES


@dataclass(kw_only=True)
class SupervisionConfig(Schema):
    """``supervision``: which training labels the run sees (full, noisy or weak)."""

    name: str = setting(one_of(SUPERVISION_MODES), resume=MUST_MATCH)
    label_noise: float = setting(number(0, high=1, high_strict=True), resume=MUST_MATCH)
    noise_seed: int = setting(integer(0), resume=MUST_MATCH)
    noise_file: str | None = setting(optional(text), resume=MUST_MATCH)
    robust_triplet: bool = setting(boolean, resume=MUST_MATCH)
    label_ratio: float = setting(number(0, strict=True, high=1), resume=MUST_MATCH)
    label_split: str = setting(one_of(LABEL_SPLITS), resume=MUST_MATCH)
    label_seed: int = setting(integer(0), resume=MUST_MATCH)
    pretrain_epochs: int = setting(integer(0), resume=MUST_MATCH)
    pretrain_lr_factor: float = setting(number(0, strict=True), resume=MUST_MATCH)
    refresh_every: int = setting(integer(1), resume=MUST_MATCH)
    labelled_weight_one: bool = setting(boolean, resume=MUST_MATCH)
    plot_epochs: tuple[int, ...] = setting(epochs_set, resume=MAY_DIFFER)  # diagnostics only
