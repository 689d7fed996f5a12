"""Telling a model whose weights are not finite (saved after training diverged) by its name.

A NaN weight makes every feature NaN, and NaN compares false with everything: a difference of
NaN is "not above the tolerance", a NaN feature ranks somewhere. So the tools that use a
checkpoint check for NaN/Inf themselves and stop, naming the checkpoint and the copy to use.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from tskd.core.files import previous_path


def nonfinite_tensors(state: Mapping[str, object]) -> list[str]:
    """Names of the floating-point tensors of ``state`` (a state dict) holding NaN or Inf."""
    return [name for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
            and not bool(torch.isfinite(t).all())]


def float_tensor_count(state: Mapping[str, object]) -> int:
    """How many floating-point tensors ``state`` holds (the denominator of the message)."""
    return sum(isinstance(t, torch.Tensor) and t.is_floating_point() for t in state.values())


def nonfinite_message(path: str | Path, state: Mapping[str, object]) -> str | None:
    """What to tell a user whose checkpoint ``path`` (weights ``state``) is not finite.

    Returns:
        The sentence naming the checkpoint, the first bad tensors and the copy to use instead,
        or None when every weight is finite.
    """
    bad = nonfinite_tensors(state)
    if not bad:
        return None
    prev = previous_path(path)
    if prev.is_file() and Path(path).name != prev.name:
        instead = f"use the copy it replaced, {prev} (ckpt={prev}), or retrain"
    else:
        instead = "use an earlier checkpoint of the run, or retrain (e.g. with a lower optim.lr)"
    first = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
    return (f"checkpoint {path} holds NaN/Inf in {len(bad)} of {float_tensor_count(state)} "
            f"weight tensors ({first}): it was saved after training diverged; {instead}")
