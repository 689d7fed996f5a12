"""GMM confidences: bimodal separation, agreement with scikit-learn, degenerate inputs."""

import numpy as np
import pytest
import torch

from tskd.core.errors import InputError, NonFiniteLossError
from tskd.losses import gmm_confidence, visible_view_confidences


def _bimodal(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    low = 0.2 + 0.1 * torch.randn(300, generator=gen).abs()  # clean samples: small CE
    high = 2.0 + 0.3 * torch.randn(100, generator=gen)  # noisy samples: large CE
    return torch.cat([low, high])


def test_bimodal_low_loss_cluster_is_trusted():
    losses = _bimodal()
    w = gmm_confidence(losses)
    assert w.shape == (400,) and w.dtype == torch.float32
    assert torch.all((w >= 0) & (w <= 1))
    assert w[:300].min() > 0.99
    assert w[300:].max() < 0.01


def test_exact_two_point_case():
    # normalised to [0, 0, 1, 1]: two point masses with variance reg_covar; the posterior of the
    # low component is 1 / (1 + exp(-1 / (2 * 5e-4))) == 1 at 0 and its complement at 1
    w = gmm_confidence(torch.tensor([3.0, 3.0, 7.0, 7.0], dtype=torch.float64))
    assert w.dtype == torch.float64
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))


def test_invariant_to_affine_rescaling_and_permutation_equivariant():
    losses = _bimodal(1).double()
    w = gmm_confidence(losses)
    torch.testing.assert_close(gmm_confidence(3.0 * losses + 5.0), w)
    perm = torch.randperm(losses.numel(), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(gmm_confidence(losses[perm]), w[perm])


def _sklearn_low_posterior(x):
    """Reference: scikit-learn's GaussianMixture with the authors' settings on 1-D data x."""
    from sklearn.mixture import GaussianMixture

    x = x.reshape(-1, 1)
    gm = GaussianMixture(n_components=2, max_iter=100, tol=1e-2, reg_covar=5e-4,
                         random_state=0).fit(x)
    return gm.predict_proba(x)[:, gm.means_.argmin()]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_gaussian_mixture(seed):
    losses = _bimodal(seed).double()
    x = ((losses - losses.min()) / (losses.max() - losses.min())).numpy()
    assert abs(gmm_confidence(losses).numpy() - _sklearn_low_posterior(x)).max() < 1e-2


@pytest.mark.parametrize("seed", [0, 1])
def test_visible_views_fit_one_gmm_on_both_normalised_views(seed):
    """Each view min-max normalised alone, one GMM on the concatenation, posteriors split."""
    v1 = _bimodal(seed).double()
    v2 = 5.0 * _bimodal(seed + 10).double() + 3.0  # another scale: normalised separately
    w1, w2 = visible_view_confidences(v1, v2)
    norm = [((v - v.min()) / (v.max() - v.min())).numpy() for v in (v1, v2)]
    ref = _sklearn_low_posterior(np.concatenate(norm))
    assert abs(w1.numpy() - ref[:400]).max() < 1e-2
    assert abs(w2.numpy() - ref[400:]).max() < 1e-2
    # not the same as two separate fits unless the views agree
    assert w1.shape == w2.shape == (400,)


def test_visible_views_share_one_fit():
    # view 2 holds only clean samples: fitted alone it would split them in two, fitted with
    # view 1 they all sit in the low component
    v1 = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    v2 = torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    w1, w2 = visible_view_confidences(v1, v2)
    torch.testing.assert_close(w1, torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(w2, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="one loss per visible image"):
        visible_view_confidences(v1, v2[:3])


def test_degenerate_inputs_give_full_confidence():
    torch.testing.assert_close(gmm_confidence(torch.full((5,), 0.7)), torch.ones(5))
    torch.testing.assert_close(gmm_confidence(torch.tensor([2.5])), torch.ones(1))
    # integer input still gives float weights
    assert gmm_confidence(torch.tensor([1, 1, 1])).dtype == torch.float32


def test_empty_input_raises_dataset_error():
    with pytest.raises(InputError, match="empty loss vector"):
        gmm_confidence(torch.zeros(0))


def test_non_finite_input_names_the_samples():
    losses = torch.tensor([0.1, float("nan"), 0.3, float("inf")])
    with pytest.raises(NonFiniteLossError, match=r"2 non-finite .*\[1, 3\]"):
        gmm_confidence(losses)


def test_bad_shape_and_settings_raise():
    with pytest.raises(ValueError, match="1-D tensor"):
        gmm_confidence(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="reg_covar > 0"):
        gmm_confidence(torch.rand(10), reg_covar=0.0)


def test_losses_are_not_modified_and_graph_is_ignored():
    losses = _bimodal().requires_grad_(True)
    before = losses.detach().clone()
    w = gmm_confidence(losses)
    assert not w.requires_grad
    assert torch.equal(losses.detach(), before)
