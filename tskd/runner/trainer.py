"""The Lightning Trainer of a run: the machine's device picked when asked, callbacks, loggers.

``trainer=auto`` (the default) resolves ``accelerator``, ``devices``, ``precision`` and
``channels_last`` once, at the start of the run, and says what it chose:

- a CUDA GPU present: one GPU, ``bf16-mixed``, channels-last (the paper's recipe on one card;
  ``trainer=ddp trainer.devices=N`` uses N GPUs, and ``data.num_ids`` is per device, so the
  global batch grows with them);
- no GPU: the CPU, ``32-true`` (CPUs gain nothing from bf16 autocast for this network).

``trainer=cpu|gpu|ddp`` fix the choice; any ``trainer.*`` key given explicitly wins over auto.
The ``trainer`` group's schema is :class:`tskd.core.trainer_config.TrainerConfig`.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tskd.core.entry import raise_pending_interruption
from tskd.core.trainer_config import AUTO

log = logging.getLogger(__name__)

_AUTO_KEYS = ("accelerator", "devices", "precision", "channels_last")


def device_settings(trainer: dict, cuda_devices: int | None = None) -> dict:
    """``trainer`` with every ``auto`` among the device keys replaced by the machine's choice.

    Args:
        trainer: The ``trainer`` config as a plain dict.
        cuda_devices: CUDA devices present (None: ask torch); a parameter so tests can state
            "a GPU is present" on a CPU machine.

    Returns:
        A new dict; ``channels_last`` is a bool.
    """
    out = dict(trainer)
    if cuda_devices is None:
        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if out.get("accelerator") == AUTO:
        out["accelerator"] = "gpu" if cuda_devices > 0 else "cpu"
    gpu = out["accelerator"] in ("gpu", "cuda")
    defaults = {"devices": 1, "precision": "bf16-mixed" if gpu else "32-true",
                "channels_last": gpu}
    for key, value in defaults.items():
        if out.get(key) == AUTO:
            out[key] = value
    out["channels_last"] = bool(out.get("channels_last", False))
    if any(trainer.get(k) == AUTO for k in _AUTO_KEYS):
        where = out["accelerator"].upper()
        if gpu and torch.cuda.is_available():
            where = f"GPU ({torch.cuda.get_device_name(0)}; {cuda_devices} present)"
        log.info("trainer=auto: %s, devices=%s, precision=%s, channels_last=%s (force with "
                 "trainer=cpu|gpu|ddp)", where, out["devices"], out["precision"],
                 out["channels_last"])
    return out


def build_trainer(cfg: DictConfig, *, training: bool, settings: dict | None = None,
                  components: list[pl.Callback] = ()) -> pl.Trainer:
    """A Trainer from the resolved ``settings`` (+ callbacks and loggers when training).

    Args:
        cfg: The run config (``trainer``, ``callbacks``, ``logger``, ``eval``, ``paths``).
        training: Whether the Trainer fits (callbacks, loggers, optional monitoring).
        settings: :func:`device_settings` of ``cfg.trainer`` (computed here when None).
        components: Callbacks the training system itself consists of (the per-epoch passes,
            the protocol evaluation); they come after ``cfg.callbacks``, so a user's callback
            sees each epoch before the passes run.
    """
    if settings is None:
        settings = device_settings(OmegaConf.to_container(cfg.trainer, resolve=True))
    args = dict(settings)
    args.pop("channels_last", None)  # applied to the model, not a Trainer argument
    callbacks, loggers = [], False
    if training:
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
        loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values()] or False
        every = cfg.eval.every_n_epochs
        if every > 0:
            args["check_val_every_n_epoch"] = every
        else:
            args["limit_val_batches"] = 0
    else:
        args["enable_checkpointing"] = False
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    return pl.Trainer(**args, callbacks=[*callbacks, *components, PendingInterruption()],
                      logger=loggers, default_root_dir=cfg.paths.output_dir)


class PendingInterruption(pl.Callback):
    """Stops the run at the next batch when a SIGTERM/SIGINT's exception was lost on the way.

    See :func:`tskd.core.entry.raise_pending_interruption`; without the entry points' handlers
    (a library caller) it does nothing.
    """

    def on_train_epoch_start(self, *args, **kwargs) -> None:
        raise_pending_interruption()

    def on_train_batch_start(self, *args, **kwargs) -> None:
        raise_pending_interruption()

    def on_train_epoch_end(self, *args, **kwargs) -> None:  # after the per-epoch passes
        raise_pending_interruption()

    def on_validation_batch_start(self, *args, **kwargs) -> None:
        raise_pending_interruption()

    def on_test_batch_start(self, *args, **kwargs) -> None:
        raise_pending_interruption()
