"""Learning-rate schedule and stage switch of docs/method.md, "Optimisation" and "Two stages"."""

from __future__ import annotations

from collections.abc import Sequence


def lr_factor(
    epoch: int, warmup_epochs: int = 10, milestones: Sequence[int] = (20, 40), gamma: float = 0.1
) -> float:
    """Multiplier of the base lr at ``epoch`` (0-based).

    Linear warm-up ``(epoch + 1) / warmup_epochs`` for the first ``warmup_epochs`` epochs, then
    ``gamma ** (number of milestones reached)``: with the defaults 1 until epoch 20, 0.1 until
    40, 0.01 after.
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    return gamma ** sum(epoch >= m for m in milestones)


def stage(epoch: int, ce_only_epochs: int = 1, md_start: int = 10, pretrain_epochs: int = 0
          ) -> str:
    """Which losses are on at ``epoch``: ``"warmup"`` (CE only), ``"I"`` or ``"II"`` (+ MD).

    ``pretrain_epochs`` (weak supervision) come first, as ``"pretrain"`` (CE on the labelled
    images); the main run's epochs count from their end.
    """
    if epoch < pretrain_epochs:
        return "pretrain"
    epoch -= pretrain_epochs
    if epoch < ce_only_epochs:
        return "warmup"
    return "II" if epoch >= md_start else "I"
