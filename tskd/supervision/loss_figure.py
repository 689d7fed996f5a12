"""The per-sample loss histogram with the fitted two-component mixture drawn over it.

This is the first figure people look at under noisy labels: if the mixture separates the clean
from the noisy samples, the clean histogram sits under the low-loss component and the noisy one
under the high-loss component. Each panel stacks the histograms of the two groups (clean/noisy,
or right/wrong pseudo-labels) on shared bins, so the bars add up to everything the mixture was
fitted on, and draws each weighted component and their sum scaled to the bars' counts.

matplotlib is imported inside the function (importing tskd stays fast) and used through its
object API on a bare ``Figure`` (the Agg renderer, no pyplot state, safe on a headless node).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tskd.core.errors import InputError
from tskd.core.files import write_atomic
from tskd.losses.confidence import MixtureFit

__all__ = ["LossPanel", "loss_histogram_png", "loss_histograms_png"]

_BINS = 40
_GROUP_COLOURS = ("tab:blue", "tab:red")
_PANEL_SIZE = (5.2, 3.8)  # inches per panel; at 100 dpi one panel is 520 x 380 pixels
DPI = 100


@dataclass(frozen=True)
class LossPanel:
    """One panel of the figure.

    Attributes:
        name: Panel title (e.g. "visible" or "infrared").
        losses: (N,) per-sample losses (tensor or array).
        group_mask: (N,) bool, True for the first group (clean / right), or None for one group.
        fit: The mixture fitted to these losses (same units), or None to draw no curve.
        xlabel: The x axis label.
    """

    name: str
    losses: Any
    group_mask: Any = None
    fit: MixtureFit | None = None
    xlabel: str = "per-sample loss"


def _host(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check(panel: LossPanel) -> tuple[np.ndarray, np.ndarray | None]:
    losses = _host(panel.losses).astype(np.float64)
    if losses.ndim != 1 or losses.size == 0:
        raise InputError(f"panel {panel.name!r}: losses must be a non-empty 1-D array, got "
                         f"shape {losses.shape}")
    if not np.isfinite(losses).all():
        raise InputError(f"panel {panel.name!r}: {int((~np.isfinite(losses)).sum())} "
                         "non-finite losses; the network diverged")
    if panel.group_mask is None:
        return losses, None
    mask = _host(panel.group_mask)
    if mask.dtype != np.bool_ or mask.shape != losses.shape:
        raise InputError(f"panel {panel.name!r}: group_mask must be a bool array of shape "
                         f"{losses.shape}, got {mask.dtype} {mask.shape}")
    return losses, mask


def _draw_panel(ax, panel: LossPanel, group_names: Sequence[str]) -> None:
    losses, mask = _check(panel)
    lo, hi = float(losses.min()), float(losses.max())
    if panel.fit is not None:  # the curve's range: the normalisation the mixture was fitted on
        lo, hi = min(lo, panel.fit.loss_min), max(hi, panel.fit.loss_max)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, _BINS + 1)
    if mask is None:
        groups, names, colours = [losses], ["all samples"], ["tab:gray"]
    else:
        groups = [losses[mask], losses[~mask]]
        names, colours = list(group_names), list(_GROUP_COLOURS)
    labels = [f"{name} (n={g.size})" for name, g in zip(names, groups)]
    ax.hist(groups, bins=edges, stacked=True, color=colours, label=labels, alpha=0.75)
    if panel.fit is not None:
        grid = np.linspace(lo, hi, 400)
        # density x samples x bin width = expected count per bin, the bars' unit
        dens = panel.fit.densities(grid) * losses.size * (edges[1] - edges[0])
        ax.plot(grid, dens.sum(0), "-", color="black", linewidth=1.5, label="mixture")
        low = panel.fit.low  # components on top, so they stay visible where they meet the sum
        for k, colour, role in ((low, "tab:green", "low-loss component"),
                                (1 - low, "tab:orange", "high-loss component")):
            ax.plot(grid, dens[k], "--", color=colour, linewidth=2.0,
                    label=f"{role} (weight {panel.fit.weights[k]:.2f})")
    ax.set_title(panel.name)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel("samples per bin")
    ax.legend(fontsize="small", framealpha=0.85)
    ax.grid(alpha=0.25)


def loss_histograms_png(path: str | Path, panels: Sequence[LossPanel | tuple],
                        group_names: Sequence[str] = ("clean", "noisy"),
                        title: str = "") -> Path:
    """Write one PNG with a row of loss-histogram panels (see the module docstring).

    Args:
        path: The PNG to write (atomically; parents are created).
        panels: :class:`LossPanel` objects, or tuples of its fields in order
            ``(name, losses, group_mask, fit[, xlabel])``.
        group_names: Names of the mask's True and False groups, e.g. ("right", "wrong").
        title: The figure's title.

    Returns:
        ``path`` as a Path.
    """
    panels = [p if isinstance(p, LossPanel) else LossPanel(*p) for p in panels]
    if not panels:
        raise InputError("loss_histograms_png needs at least one panel")
    if len(group_names) != 2:
        raise InputError(f"group_names must name two groups, got {list(group_names)}")
    for p in panels:  # every input is checked before anything is drawn or written
        _check(p)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_PANEL_SIZE[0] * len(panels), _PANEL_SIZE[1]), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel, group_names)
    if title:
        fig.suptitle(title)
    path = Path(path)
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI))
    return path


def loss_histogram_png(path: str | Path, losses: Any, group_mask: Any = None,
                       group_names: Sequence[str] = ("clean", "noisy"),
                       fit: MixtureFit | None = None, title: str = "",
                       xlabel: str = "per-sample loss") -> Path:
    """One-panel form of :func:`loss_histograms_png` (the panel is untitled; ``title`` heads
    the figure)."""
    return loss_histograms_png(path, [LossPanel("", losses, group_mask, fit, xlabel)],
                               group_names, title)
