"""Mutual distillation (MD): multi-kernel MMD between visible and infrared features per identity.

For each identity in the batch, its K visible features of one view and its K infrared features
are compared with the squared maximum mean discrepancy (biased V-statistic)

    D(X, Y) = mean(k(X, X)) + mean(k(Y, Y)) - 2 mean(k(X, Y))

under a sum of Gaussian kernels ``k(a, b) = sum_q exp(-|a - b|^2 / bw_q)``. With ``b`` the mean
pairwise squared distance of the pooled m = n + n' samples (detached), ``bw_q = b * 2^(q-2)``
for q = 0..4. ``b`` divides the sum of squared distances by m^2 - m, leaving out the zero
diagonal, as the authors' code does (``bandwidth="offdiag"``, the default);
``bandwidth="all"`` divides by m^2.

Distillation runs both ways with a stop-gradient on the target. ``form="code"`` (default, the
authors' code, whose magnitude ``md_w`` = 0.05 was tuned with) sums four terms per identity c,

    D(F1_c, sg Fr_c) + D(F2_c, sg Fr_c) + D(Fr_c, sg F1_c) + D(Fr_c, sg F2_c),

averaged over the identities of the batch. ``form="paper"`` is the tidier
``1/2 [D(V, sg R) + D(R, sg V)]`` averaged over the two visible views V: a quarter of it.
See docs/method.md ("MD").
"""

from __future__ import annotations

import torch
from torch import nn

from tskd.losses.host_reads import host_copy, to_device

__all__ = ["MD_BANDWIDTHS", "MD_FORMS", "MutualDistillationLoss", "md_direction",
           "multi_kernel_mmd2"]


def multi_kernel_mmd2(
    x: torch.Tensor,
    y: torch.Tensor,
    num_kernels: int = 5,
    kernel_mul: float = 2.0,
    diag_in_bandwidth: bool = False,
) -> torch.Tensor:
    """Squared MMD (biased) with a sum of Gaussian kernels.

    Args:
        x: First sample set, (n, C), or a batch of sets (P, n, C).
        y: Second sample set, (m, C), or (P, m, C).
        num_kernels: Number of Gaussian kernels.
        kernel_mul: Ratio between consecutive bandwidths.
        diag_in_bandwidth: Whether the bandwidth base averages over the zero diagonal too
            (m^2 entries) instead of the m^2 - m off-diagonal ones (the authors' code).

    Returns:
        Scalar for 2-D inputs, (P,) for batched inputs; float32 for 16-bit inputs (computed
        with autocast off), the input dtype otherwise.
    """
    if x.dim() != y.dim() or x.dim() not in (2, 3) or x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"x and y must both be (n, C) or (P, n, C) with the same C, got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    if num_kernels < 1 or kernel_mul <= 0:
        raise ValueError(
            f"need num_kernels >= 1 and kernel_mul > 0, got {num_kernels} and {kernel_mul}; "
            "the defaults are 5 and 2.0"
        )
    if x.dim() == 2:
        return multi_kernel_mmd2(x[None], y[None], num_kernels, kernel_mul, diag_in_bandwidth)[0]
    if x.shape[0] != y.shape[0] or x.shape[1] == 0 or y.shape[1] == 0:
        raise ValueError(
            f"batched sets need the same P and at least one sample each, got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _mmd2_batched(x, y, num_kernels, kernel_mul, diag_in_bandwidth)


def _mmd2_batched(
    x: torch.Tensor, y: torch.Tensor, num_kernels: int, kernel_mul: float, diag: bool
) -> torch.Tensor:
    """MMD^2 of (P, n, C) against (P, m, C) -> (P,), in at least float32 precision."""
    n = x.shape[1]
    z = torch.cat([x, y], dim=1)  # (P, n+m, C) pooled samples
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # the distance expansion below cancels badly in 16-bit arithmetic
    t = z.shape[1]
    sq = z.pow(2).sum(-1)  # (P, n+m)
    d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * z @ z.transpose(1, 2)  # (P, n+m, n+m)
    # the expansion can round below zero and leaves tiny values on the diagonal; both are fixed
    # so that identical sets give exactly zero distance to themselves
    eye = torch.eye(t, dtype=torch.bool, device=z.device)
    d2 = d2.clamp(min=0.0).masked_fill(eye, 0.0)
    denom = t * t if diag or t == 1 else t * t - t
    base = d2.detach().sum((1, 2)) / denom  # (P,)
    # all-coincident points have zero spread; any positive bandwidth then gives k = 1 exactly
    base = base.clamp(min=1e-12) / kernel_mul ** (num_kernels // 2)
    kernel = torch.zeros_like(d2)
    for i in range(num_kernels):
        kernel = kernel + torch.exp(-d2 / (base * kernel_mul**i)[:, None, None])
    k_xx = kernel[:, :n, :n].mean((1, 2))
    k_yy = kernel[:, n:, n:].mean((1, 2))
    k_xy = kernel[:, :n, n:].mean((1, 2))
    return k_xx + k_yy - 2.0 * k_xy


def md_direction(x_student: torch.Tensor, y_target: torch.Tensor, **kernel) -> torch.Tensor:
    """One distillation direction ``D(x, sg y)``: MMD^2 with no gradient into the target.

    Args:
        x_student: Features that are moved, (n, C) or (P, n, C).
        y_target: Features that act as the fixed target, same layout.
        **kernel: Passed to :func:`multi_kernel_mmd2`.
    """
    return multi_kernel_mmd2(x_student, y_target.detach(), **kernel)


MD_FORMS = ("code", "paper")
MD_BANDWIDTHS = ("offdiag", "all")


class MutualDistillationLoss(nn.Module):
    """Bidirectional per-identity MMD between each visible view and the infrared features.

    Args:
        form: ``"code"`` (four directions summed, the default) or ``"paper"`` (1/2 per view,
            averaged over the views: 1/4 of ``code``); see the module docstring.
        bandwidth: ``"offdiag"`` (mean over the m^2 - m off-diagonal distances, the default)
            or ``"all"`` (over all m^2).
        num_kernels: Number of Gaussian kernels (5).
        kernel_mul: Bandwidth ratio (2.0).
    """

    def __init__(self, form: str = "code", bandwidth: str = "offdiag", num_kernels: int = 5,
                 kernel_mul: float = 2.0) -> None:
        super().__init__()
        if form not in MD_FORMS:
            raise ValueError(f"loss.md_form={form!r}: use one of {MD_FORMS}")
        if bandwidth not in MD_BANDWIDTHS:
            raise ValueError(f"loss.md_bandwidth={bandwidth!r}: use one of {MD_BANDWIDTHS}")
        self.form, self.bandwidth = form, bandwidth
        self.kernel = {
            "num_kernels": num_kernels,
            "kernel_mul": kernel_mul,
            "diag_in_bandwidth": bandwidth == "all",
        }

    def extra_repr(self) -> str:
        return f"form={self.form!r}, bandwidth={self.bandwidth!r}"

    def _both_ways(self, fv: torch.Tensor, fir: torch.Tensor) -> torch.Tensor:
        """``D(F_ir, sg F_v) + D(F_v, sg F_ir)`` per identity: (P,) from (P, K, C) groups."""
        return md_direction(fir, fv, **self.kernel) + md_direction(fv, fir, **self.kernel)

    def _combine(self, per_view: list[torch.Tensor]) -> torch.Tensor:
        """Per-identity both-ways sums of view 1 and view 2, each (P,) -> the scalar loss."""
        if self.form == "code":
            return (per_view[0] + per_view[1]).mean()
        # paper: mean over identities of 1/2 (both ways), then mean over the two views (the
        # operation order of the first implementation, kept so its results stay bit-identical)
        means = [(0.5 * v).mean() for v in per_view]
        return 0.5 * (means[0] + means[1])

    def forward(
        self,
        f_vis1: torch.Tensor,
        f_vis2: torch.Tensor,
        f_ir: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Compute the loss (without ``md_w``).

        Args:
            f_vis1: Visible view-1 features (B, C).
            f_vis2: Visible view-2 features (B, C).
            f_ir: Infrared features (B, C).
            labels: Identities (B,) shared by the three tensors row by row.

        Returns:
            Scalar: the per-identity loss of ``form`` averaged over the batch's identities.
        """
        b = labels.shape[0] if labels.dim() == 1 else -1
        feats = (f_vis1, f_vis2, f_ir)
        if b < 1 or any(t.dim() != 2 or t.shape[0] != b for t in feats):
            raise ValueError(
                f"f_vis1, f_vis2, f_ir must be (B, C) and labels (B,) with B >= 1, got "
                f"{[tuple(t.shape) for t in feats]} and {tuple(labels.shape)}"
            )
        # the grouping comes from one host copy of the labels (one synchronisation on a GPU,
        # instead of one for torch.unique and one for each value read from its output)
        ids, inverse, counts = torch.unique(host_copy(labels), return_inverse=True,
                                            return_counts=True)
        if bool((counts == counts[0]).all()):
            # equal group sizes (the P x K sampler): one batched call over all identities
            p, k = ids.numel(), int(counts[0])
            order = to_device(torch.argsort(inverse, stable=True), f_ir.device)  # by identity
            fir = f_ir[order].reshape(p, k, -1)  # (P, K, C)
            per_view = [self._both_ways(fv[order].reshape(p, k, -1), fir)
                        for fv in (f_vis1, f_vis2)]
        else:
            groups = [to_device((inverse == j).nonzero().squeeze(1), f_ir.device)
                      for j in range(ids.numel())]
            per_view = [
                torch.stack([self._both_ways(fv[rows][None], f_ir[rows][None])[0]
                             for rows in groups])
                for fv in (f_vis1, f_vis2)
            ]
        return self._combine(per_view)
