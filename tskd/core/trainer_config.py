"""``trainer``: the schema of Lightning's Trainer arguments (configs/trainer).

It lives on the ground floor, not beside the Trainer it configures (:mod:`tskd.runner.trainer`),
because :mod:`tskd.config` composes it into every run's schema and the runner imports the config,
never the reverse.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl

from tskd.core.checks import (
    boolean,
    either,
    integer,
    is_int,
    is_number,
    literal,
    number,
    one_of,
    optional,
)
from tskd.core.schema import MAY_DIFFER, Schema, setting

AUTO = "auto"
_TRAINER_ARGS = inspect.signature(pl.Trainer.__init__).parameters


def _literals(annotation) -> list:
    """The ``Literal`` values inside a Trainer argument's annotation (its accepted strings)."""
    out = []
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            out += list(typing.get_args(arg))
        else:
            out += _literals(arg)
    return out


def _accelerators() -> tuple[str, ...]:
    from pytorch_lightning.accelerators import AcceleratorRegistry

    return (AUTO, "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


def _strategies() -> tuple[str, ...]:
    from pytorch_lightning.strategies import StrategyRegistry

    return (AUTO, *StrategyRegistry.available_strategies())


def _devices(v) -> str | None:
    """Lightning's ``devices``: auto, -1 (all), a count, ``"0,1"`` or a list of indices."""
    if v == AUTO or (is_int(v) and (v >= 1 or v == -1)):
        return None
    if isinstance(v, str) and v.strip() and all(x.strip().lstrip("-").isdigit()
                                                 for x in v.split(",") if x.strip()):
        return None
    if isinstance(v, list | tuple) and v and all(is_int(x) and x >= 0 for x in v):
        return None
    return "auto, -1 (every device), a whole number >= 1 or a list of device indices"


def _batches(v) -> str | None:
    """A fraction of the epoch's batches in (0, 1] or a whole number of batches >= 1."""
    if is_int(v) and v >= 1 or (is_number(v) and not is_int(v) and 0 < v <= 1):
        return None
    return ("a fraction of the epoch in (0, 1] or a whole number of batches >= 1, since 0 "
            "trains nothing and would test an untrained network")


@dataclass(kw_only=True)
class TrainerConfig(Schema):
    """``trainer``: arguments of Lightning's Trainer (configs/trainer), plus ``channels_last``.

    Every key may change on resume (``max_epochs`` to extend a run, another machine's devices).
    A Trainer argument that is not listed here (``+trainer.accumulate_grad_batches=2``) is
    passed on as given, with a warning naming it; anything else is refused.
    """

    max_epochs: int = setting(integer(1), resume=MAY_DIFFER)
    accelerator: str = setting(one_of(_accelerators), resume=MAY_DIFFER)
    devices: Any = setting(_devices, resume=MAY_DIFFER)
    num_nodes: int = setting(integer(1), resume=MAY_DIFFER)
    strategy: str = setting(one_of(_strategies), resume=MAY_DIFFER)
    precision: Any = setting(
        one_of(lambda: (AUTO, *_literals(_TRAINER_ARGS["precision"].annotation))),
        resume=MAY_DIFFER)
    log_every_n_steps: int = setting(integer(1), resume=MAY_DIFFER)
    num_sanity_val_steps: int = setting(integer(-1), resume=MAY_DIFFER)
    deterministic: Any = setting(either(boolean, literal("warn")), resume=MAY_DIFFER)
    benchmark: bool | None = setting(optional(boolean), resume=MAY_DIFFER)
    use_distributed_sampler: bool = setting(boolean, resume=MAY_DIFFER)
    channels_last: Any = setting(either(boolean, literal(AUTO)), resume=MAY_DIFFER)
    limit_train_batches: Any = setting(_batches, resume=MAY_DIFFER)
    enable_progress_bar: bool = setting(boolean, resume=MAY_DIFFER)
    gradient_clip_val: float | None = setting(optional(number(0)), resume=MAY_DIFFER)
    sync_batchnorm: bool = setting(boolean, resume=MAY_DIFFER)

    @classmethod
    def extra_key(cls, name: str, value: Any) -> str | None:
        if name not in _TRAINER_ARGS or name in ("self", "callbacks", "logger"):
            return None
        return (f"trainer.{name}={value!r} is not in tskd's trainer schema: passed to "
                "Lightning's Trainer as given, unchecked")
