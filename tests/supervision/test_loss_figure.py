"""The loss-histogram PNG: opens with Pillow at the documented size, shows the groups and the
mixture, is written atomically and refuses bad input before writing anything."""

import numpy as np
import pytest
import torch
from PIL import Image

from tskd.core.errors import InputError
from tskd.losses import fit_loss_mixture, fit_visible_mixture
from tskd.supervision.loss_figure import LossPanel, loss_histogram_png, loss_histograms_png

GREEN = (44, 160, 44)  # matplotlib's tab:green, the low-loss component's dashed line
ORANGE = (255, 127, 14)  # tab:orange, the high-loss component


def _losses(seed=0, n=400):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(n, generator=g) < 0.6
    noise = torch.randn(n, generator=g, dtype=torch.float64)
    losses = torch.where(clean, 0.4 + 0.2 * noise.abs(), 2.5 + 0.5 * noise)
    return losses, clean


def _pixels(path):
    with Image.open(path) as img:
        img.load()
        return img.size, np.asarray(img.convert("RGB"))


def _has_colour(rgb, colour):
    return bool((rgb == np.array(colour, dtype=np.uint8)).all(-1).any())


def test_one_panel_with_fit(tmp_path):
    losses, clean = _losses()
    out = loss_histogram_png(tmp_path / "figs" / "loss.png", losses, clean,
                             fit=fit_loss_mixture(losses), title="infrared, epoch 3")
    assert out == tmp_path / "figs" / "loss.png"
    size, rgb = _pixels(out)
    assert size == (520, 380)
    assert (rgb != 255).any(-1).mean() > 0.05  # not blank: bars, curves, text
    assert _has_colour(rgb, GREEN) and _has_colour(rgb, ORANGE)
    assert [p.name for p in tmp_path.joinpath("figs").iterdir()] == ["loss.png"]  # no temp


def test_without_fit_no_curve_is_drawn(tmp_path):
    losses, clean = _losses()
    _, rgb = _pixels(loss_histogram_png(tmp_path / "a.png", losses, clean))
    assert not _has_colour(rgb, GREEN) and not _has_colour(rgb, ORANGE)
    _, single = _pixels(loss_histogram_png(tmp_path / "b.png", losses))  # one group
    assert (single != 255).any(-1).mean() > 0.05


def test_a_row_of_panels_and_tuple_panels(tmp_path):
    v1, clean = _losses(1)
    v2, clean2 = _losses(2)
    ir, ir_clean = _losses(3)
    fit_v, x = fit_visible_mixture(v1, v2)
    panels = [LossPanel("visible (both views)", x, torch.cat([clean, clean2]), fit_v,
                        "normalised per-sample loss"),
              ("infrared", ir, ir_clean, fit_loss_mixture(ir))]
    out = loss_histograms_png(tmp_path / "loss.png", panels, ("right", "wrong"), "epoch 5")
    size, rgb = _pixels(out)
    assert size == (1040, 380)
    for half in (rgb[:, :520], rgb[:, 520:]):  # each panel carries its own mixture
        assert _has_colour(half, GREEN)


def test_rewrite_replaces_the_file(tmp_path):
    losses, clean = _losses()
    path = tmp_path / "loss.png"
    loss_histogram_png(path, losses, clean)
    first = path.read_bytes()
    loss_histogram_png(path, losses, clean, fit=fit_loss_mixture(losses))
    assert path.read_bytes() != first and sorted(p.name for p in tmp_path.iterdir()) == [
        "loss.png"]


def test_bad_input_writes_nothing(tmp_path):
    losses, clean = _losses()
    path = tmp_path / "loss.png"
    with pytest.raises(InputError, match="group_mask must be a bool array"):
        loss_histograms_png(path, [("ok", losses, clean, None), ("bad", losses, clean[:-1], None)])
    with pytest.raises(InputError, match="non-finite"):
        loss_histogram_png(path, torch.tensor([1.0, float("inf")]))
    with pytest.raises(InputError, match="non-empty 1-D"):
        loss_histogram_png(path, np.array([]))
    with pytest.raises(InputError, match="at least one panel"):
        loss_histograms_png(path, [])
    with pytest.raises(InputError, match="two groups"):
        loss_histogram_png(path, losses, clean, group_names=("a", "b", "c"))
    assert not path.exists() and list(tmp_path.iterdir()) == []
