"""The fitted mixture behind the GMM confidences: its posterior is gmm_confidence's output, its
parameters agree with scikit-learn, its densities are Gaussians in loss units."""

import numpy as np
import pytest
import torch

from tskd.core.errors import InputError, NonFiniteLossError
from tskd.losses import (
    MixtureFit,
    fit_loss_mixture,
    fit_visible_mixture,
    gmm_confidence,
    visible_view_confidences,
)


def _bimodal(seed: int, n_clean: int = 300, n_noisy: int = 100) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    low = 0.2 + 0.1 * torch.randn(n_clean, generator=gen).abs()
    high = 2.0 + 0.3 * torch.randn(n_noisy, generator=gen)
    return torch.cat([low, high]).double()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_posterior_is_exactly_gmm_confidence(seed):
    losses = 4.0 * _bimodal(seed) + 1.0
    fit = fit_loss_mixture(losses)
    assert torch.equal(fit.posterior(losses), gmm_confidence(losses))
    assert fit.loss_min == float(losses.min()) and fit.loss_max == float(losses.max())
    # float32 input: the confidences are the float64 posterior cast down
    assert torch.equal(fit_loss_mixture(losses.float()).posterior(losses.float()).float(),
                       gmm_confidence(losses.float()))


@pytest.mark.parametrize("seed", [0, 1])
def test_visible_fit_posterior_is_both_views_confidences(seed):
    v1 = _bimodal(seed)
    v2 = 3.0 * _bimodal(seed + 10) + 2.0
    fit, x = fit_visible_mixture(v1, v2)
    assert x.shape == (800,) and (fit.loss_min, fit.loss_max) == (0.0, 1.0)
    torch.testing.assert_close(x[:400], (v1 - v1.min()) / (v1.max() - v1.min()))
    w1, w2 = visible_view_confidences(v1, v2)
    assert torch.equal(fit.posterior(x), torch.cat([w1, w2]))


def test_parameters_agree_with_sklearn():
    from sklearn.mixture import GaussianMixture

    losses = _bimodal(5)
    x = ((losses - losses.min()) / (losses.max() - losses.min())).numpy().reshape(-1, 1)
    gm = GaussianMixture(n_components=2, max_iter=100, tol=1e-2, reg_covar=5e-4,
                         random_state=0).fit(x)
    fit = fit_loss_mixture(losses)
    order_ours, order_ref = np.argsort(fit.means), np.argsort(gm.means_.ravel())
    np.testing.assert_allclose(np.array(fit.means)[order_ours], gm.means_.ravel()[order_ref],
                               atol=1e-3)
    np.testing.assert_allclose(np.array(fit.weights)[order_ours], gm.weights_[order_ref],
                               atol=1e-3)
    np.testing.assert_allclose(np.array(fit.variances)[order_ours],
                               gm.covariances_.ravel()[order_ref], atol=1e-4)
    assert fit.means[fit.low] == min(fit.means)
    assert sum(fit.weights) == pytest.approx(1.0)


def test_densities_are_weighted_gaussians_in_loss_units():
    from scipy.stats import norm

    fit = MixtureFit(weights=(0.7, 0.3), means=(0.8, 0.1), variances=(0.01, 0.04), low=1,
                     loss_min=3.0, loss_max=7.0)
    grid = np.linspace(-5.0, 15.0, 40001)
    dens = fit.densities(grid)
    assert dens.shape == (2, grid.size)
    # in loss units component k is N(3 + 4 mu, 16 var), times its weight
    for k in range(2):
        ref = fit.weights[k] * norm.pdf(grid, 3.0 + 4.0 * fit.means[k],
                                        4.0 * np.sqrt(fit.variances[k]))
        np.testing.assert_allclose(dens[k], ref, rtol=1e-10, atol=1e-300)
    areas = dens.sum(1) * (grid[1] - grid[0])
    np.testing.assert_allclose(areas, fit.weights, atol=1e-6)


def test_no_fit_where_gmm_confidence_trusts_everything():
    assert fit_loss_mixture(torch.full((5,), 2.0)) is None
    assert fit_loss_mixture(torch.tensor([1.0])) is None
    fit, x = fit_visible_mixture(torch.full((4,), 1.0), torch.full((4,), 3.0))
    assert fit is None and torch.equal(x, torch.zeros(8, dtype=torch.float64))
    # one constant view still fits (its zeros join the other view's spread)
    assert fit_visible_mixture(torch.full((4,), 1.0), torch.arange(4.0))[0] is not None


def test_bad_losses_raise_like_gmm_confidence():
    with pytest.raises(InputError, match="empty"):
        fit_loss_mixture(torch.tensor([]))
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        fit_loss_mixture(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="1-D"):
        fit_loss_mixture(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="one loss per visible image"):
        fit_visible_mixture(torch.arange(3.0), torch.arange(4.0))
