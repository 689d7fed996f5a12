"""Per-sample confidences from a two-component 1-D Gaussian mixture on the training losses.

Clean, well-fitted samples have small cross-entropy and noisy or hard ones large, so the loss
distribution is roughly bimodal. Following the SI loss of TSKD, the losses of one modality are
min-max normalised to [0, 1], a two-component Gaussian mixture is fitted to them by EM and each
sample's confidence is the posterior probability of the component with the lower mean.

The EM is our own small float64 implementation (scikit-learn is not a runtime dependency; the
tests compare against it). It mirrors
``sklearn.mixture.GaussianMixture(n_components=2, max_iter=100, tol=1e-2, reg_covar=5e-4)``,
the settings of the authors' code:
hard 2-means responsibilities initialise the parameters, every iteration is an E-step then an
M-step, the loop stops once the mean log-likelihood changes by less than ``tol`` and a final
E-step produces the posteriors. The 2-means starts from the minimum and maximum (0 and 1 after
normalisation), so the result is deterministic, which keeps all DDP ranks identical.

:func:`visible_view_confidences` is the authors' visible fit: the per-sample losses of visible
view 1 and view 2 are min-max normalised separately, one GMM is fitted on the two concatenated,
and each view keeps its own posterior (docs/method.md, "GMM confidences").

:func:`fit_loss_mixture`, :func:`fit_visible_mixture`: the same fits, returning the mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tskd.core.errors import InputError, NonFiniteLossError

__all__ = [
    "MixtureFit",
    "fit_loss_mixture",
    "fit_visible_mixture",
    "gmm_confidence",
    "visible_view_confidences",
]

_LOG_2PI = math.log(2.0 * math.pi)
# sklearn adds 10 * float eps to each component mass so a component can never become empty
_MASS_EPS = 10.0 * torch.finfo(torch.float64).eps


def _two_means(x: torch.Tensor, max_iter: int = 100) -> torch.Tensor:
    """Lloyd's 2-means on 1-D data started at the min (0) and max (1).

    Returns a bool tensor (N,), True where the sample belongs to the upper cluster. Both
    clusters stay non-empty: the minimum always sits with the lower centre, the maximum with
    the upper one.
    """
    centres = x.new_tensor([0.0, 1.0])
    upper = (x - centres[0]).abs() > (x - centres[1]).abs()  # ties go to the lower cluster
    for _ in range(max_iter):
        new_centres = torch.stack([x[~upper].mean(), x[upper].mean()])
        if torch.equal(new_centres, centres):
            break
        centres = new_centres
        upper = (x - centres[0]).abs() > (x - centres[1]).abs()
    return upper


def _m_step(
    x: torch.Tensor, resp: torch.Tensor, reg_covar: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixture weights (2,), means (2,) and variances (2,) from responsibilities (N, 2)."""
    mass = resp.sum(0) + _MASS_EPS  # (2,)
    means = (resp * x[:, None]).sum(0) / mass
    variances = (resp * (x[:, None] - means) ** 2).sum(0) / mass + reg_covar
    return mass / x.shape[0], means, variances


def _e_step(
    x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean log-likelihood (scalar) and log-responsibilities (N, 2)."""
    log_gauss = -0.5 * (_LOG_2PI + variances.log() + (x[:, None] - means) ** 2 / variances)
    weighted = log_gauss + weights.log()  # (N, 2)
    log_norm = torch.logsumexp(weighted, dim=1)  # (N,)
    return log_norm.mean(), weighted - log_norm[:, None]


def _check_losses(losses: torch.Tensor, max_iter: int, tol: float, reg_covar: float) -> None:
    if losses.dim() != 1:
        raise ValueError(
            f"losses must be a 1-D tensor (one loss per sample), got shape "
            f"{tuple(losses.shape)}; flatten it first"
        )
    if max_iter < 1 or tol <= 0 or reg_covar <= 0:
        raise ValueError(
            f"invalid GMM settings max_iter={max_iter}, tol={tol}, reg_covar={reg_covar}; "
            "use max_iter >= 1, tol > 0 and reg_covar > 0 (defaults 100, 1e-2, 5e-4)"
        )
    if losses.shape[0] == 0:
        raise InputError(
            "gmm_confidence got an empty loss vector: the modality has no training images; "
            "check the training split of the dataset"
        )
    bad = ~torch.isfinite(losses.detach())
    if bad.any():
        idx = bad.nonzero().flatten()[:10].tolist()
        raise NonFiniteLossError(
            f"gmm_confidence got {int(bad.sum())} non-finite per-sample losses (first indices "
            f"{idx}); the network diverged — lower the learning rate or resume from an earlier "
            "checkpoint"
        )


def _minmax(losses: torch.Tensor) -> torch.Tensor | None:
    """float64 CPU copy scaled to [0, 1]; None when nothing separates the samples."""
    # the fit is tiny (N scalars); on the CPU in float64 it is exact and identical on all ranks
    x = losses.detach().to(device="cpu", dtype=torch.float64)
    lo, hi = x.min(), x.max()
    if x.shape[0] < 2 or hi == lo:
        return None
    return (x - lo) / (hi - lo)


def _fit_em(x: torch.Tensor, max_iter: int, tol: float, reg_covar: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EM fit of a 2-GMM on float64 x in [0, 1] -> weights, means, variances, each (2,)."""
    upper = _two_means(x)
    resp = torch.stack([~upper, upper], dim=1).to(torch.float64)  # (N, 2) hard assignments
    weights, means, variances = _m_step(x, resp, reg_covar)
    prev = -math.inf
    for _ in range(max_iter):
        log_lik, log_resp = _e_step(x, weights, means, variances)
        weights, means, variances = _m_step(x, log_resp.exp(), reg_covar)
        if abs(float(log_lik) - prev) < tol:
            break
        prev = float(log_lik)
    return weights, means, variances


def _posterior(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor,
               variances: torch.Tensor) -> torch.Tensor:
    """Final E-step: posterior (N,) of the lower-mean component of the fitted mixture."""
    _, log_resp = _e_step(x, weights, means, variances)
    low = int(torch.argmin(means))
    return log_resp[:, low].exp().clamp_(0.0, 1.0)  # (N,)


def _low_component_posterior(x: torch.Tensor, max_iter: int, tol: float,
                             reg_covar: float) -> torch.Tensor:
    """EM fit of a 2-GMM on float64 x in [0, 1] -> posterior of the lower-mean component."""
    return _posterior(x, *_fit_em(x, max_iter, tol, reg_covar))


def _out_dtype(losses: torch.Tensor) -> torch.dtype:
    return losses.dtype if losses.is_floating_point() else torch.float32


def gmm_confidence(
    losses: torch.Tensor,
    max_iter: int = 100,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
) -> torch.Tensor:
    """Confidence of every sample = posterior of the low-loss component of a 2-GMM.

    Args:
        losses: Per-sample losses of one modality, shape (N,).
        max_iter: Maximum number of EM iterations.
        tol: Stop once the mean log-likelihood changes by less than this.
        reg_covar: Added to each component variance (normalised scale) for stability.

    Returns:
        Weights in [0, 1], shape (N,), on the device of ``losses`` and in its dtype (float32
        for non-floating input). Degenerate inputs give all ones (every sample fully trusted):
        N == 1, or all losses equal (nothing separates clean from noisy samples).

    Raises:
        ValueError: If ``losses`` is not 1-D or the EM settings are invalid.
        InputError: If ``losses`` is empty (no training images of that modality).
        NonFiniteLossError: If any loss is NaN or infinite.
    """
    _check_losses(losses, max_iter, tol, reg_covar)
    x = _minmax(losses)
    if x is None:
        return torch.ones(losses.shape[0], dtype=_out_dtype(losses), device=losses.device)
    conf = _low_component_posterior(x, max_iter, tol, reg_covar)
    return conf.to(dtype=_out_dtype(losses), device=losses.device)


def _visible_concat(losses_view1: torch.Tensor, losses_view2: torch.Tensor, max_iter: int,
                    tol: float, reg_covar: float) -> torch.Tensor:
    """Both views' losses, each min-max normalised on its own (constant: zeros), concatenated."""
    for v in (losses_view1, losses_view2):
        _check_losses(v, max_iter, tol, reg_covar)
    if losses_view1.shape != losses_view2.shape:
        raise ValueError(
            f"view 1 and view 2 need one loss per visible image each, got "
            f"{tuple(losses_view1.shape)} and {tuple(losses_view2.shape)}"
        )
    n = losses_view1.shape[0]
    parts = []
    for v in (losses_view1, losses_view2):
        x = _minmax(v)
        parts.append(torch.zeros(n, dtype=torch.float64) if x is None else x)
    return torch.cat(parts)


def visible_view_confidences(
    losses_view1: torch.Tensor,
    losses_view2: torch.Tensor,
    max_iter: int = 100,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view confidences of the visible images from one GMM over both views.

    Each loss vector (N,) is min-max normalised on its own, the two are concatenated (2N,) and
    one 2-GMM is fitted; view 1 gets the first N posteriors and view 2 the last N. A view whose
    losses are all equal normalises to zeros (the most confident end), as 0/0 is avoided.

    Returns:
        (w1, w2), each (N,) in [0, 1], on the device and in the dtype of ``losses_view1``.
    """
    both = _visible_concat(losses_view1, losses_view2, max_iter, tol, reg_covar)  # (2N,)
    n = losses_view1.shape[0]
    if both.max() == both.min():
        conf = torch.ones(2 * n, dtype=torch.float64)
    else:
        conf = _low_component_posterior(both, max_iter, tol, reg_covar)
    conf = conf.to(dtype=_out_dtype(losses_view1), device=losses_view1.device)
    return conf[:n], conf[n:]


@dataclass(frozen=True)
class MixtureFit:
    """A fitted two-component 1-D Gaussian mixture on min-max normalised losses.

    ``weights``, ``means`` and ``variances`` (``reg_covar`` included) are on the normalised
    [0, 1] scale; ``low`` indexes the lower-mean (clean, trusted) component; ``loss_min`` and
    ``loss_max`` (> loss_min) are the losses that normalise to 0 and 1.
    """

    weights: tuple[float, float]
    means: tuple[float, float]
    variances: tuple[float, float]
    low: int
    loss_min: float
    loss_max: float

    def posterior(self, losses: torch.Tensor) -> torch.Tensor:
        """Posterior (N,) float64 of the ``low`` component for raw losses (N,)."""
        x = losses.detach().to(device="cpu", dtype=torch.float64)
        x = (x - self.loss_min) / (self.loss_max - self.loss_min)
        params = (self.weights, self.means, self.variances)
        return _posterior(x, *(torch.tensor(v, dtype=torch.float64) for v in params))

    def densities(self, loss_values) -> np.ndarray:
        """Weighted component densities (2, M) in loss units at ``loss_values`` (M,): row k is
        weights[k] * N(x; means[k], variances[k]) / (loss_max - loss_min), x normalised; each row
        integrates to its weight over the loss axis, and the rows sum to the mixture density."""
        scale = self.loss_max - self.loss_min
        x = (np.asarray(loss_values, dtype=np.float64) - self.loss_min) / scale
        w, mu, var = (np.asarray(v, dtype=np.float64)[:, None]
                      for v in (self.weights, self.means, self.variances))
        return w * np.exp(-0.5 * (x[None, :] - mu) ** 2 / var) / np.sqrt(2 * np.pi * var) / scale


def _as_fit(x: torch.Tensor, lo: float, hi: float, max_iter: int, tol: float,
            reg_covar: float) -> MixtureFit:
    weights, means, variances = (tuple(t.tolist()) for t in _fit_em(x, max_iter, tol, reg_covar))
    return MixtureFit(weights, means, variances, low=int(np.argmin(means)), loss_min=lo,
                      loss_max=hi)


def fit_loss_mixture(losses: torch.Tensor, max_iter: int = 100, tol: float = 1e-2,
                     reg_covar: float = 5e-4) -> MixtureFit | None:
    """The mixture :func:`gmm_confidence` fits to ``losses`` (N,), or None where it fits none.

    ``fit.posterior(losses)`` equals ``gmm_confidence(losses)`` (in float64). None where
    gmm_confidence returns all ones: N == 1 or all losses equal. Raises as gmm_confidence does.
    """
    _check_losses(losses, max_iter, tol, reg_covar)
    x = _minmax(losses)
    if x is None:
        return None
    raw = losses.detach().to(device="cpu", dtype=torch.float64)
    return _as_fit(x, float(raw.min()), float(raw.max()), max_iter, tol, reg_covar)


def fit_visible_mixture(losses_view1: torch.Tensor, losses_view2: torch.Tensor,
                        max_iter: int = 100, tol: float = 1e-2, reg_covar: float = 5e-4
                        ) -> tuple[MixtureFit | None, torch.Tensor]:
    """The mixture :func:`visible_view_confidences` fits, and the losses it was fitted on.

    Returns (fit, x): x (2N,) float64 are both views' losses, each min-max normalised on its own,
    concatenated (view 1 first); the fit lives on that scale (loss_min 0, loss_max 1), so
    ``fit.posterior(x)`` equals visible_view_confidences' outputs concatenated. fit is None
    where those are all ones.
    """
    both = _visible_concat(losses_view1, losses_view2, max_iter, tol, reg_covar)  # (2N,)
    if both.max() == both.min():
        return None, both
    return _as_fit(both, 0.0, 1.0, max_iter, tol, reg_covar), both
