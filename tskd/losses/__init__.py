"""TSKD losses: soft-identity CE with GMM confidences, batch-hard triplet, self-mimic, MD."""

from tskd.losses.confidence import (
    MixtureFit,
    fit_loss_mixture,
    fit_visible_mixture,
    gmm_confidence,
    visible_view_confidences,
)
from tskd.losses.mmd import MutualDistillationLoss, md_direction, multi_kernel_mmd2
from tskd.losses.robust_triplet import RobustTriplet
from tskd.losses.self_mimic import PrototypeBank, SelfMimicLoss
from tskd.losses.soft_identity import SoftIdentityLoss, per_sample_ce
from tskd.losses.triplet import BatchHardTriplet, euclidean_dist

__all__ = [
    "BatchHardTriplet",
    "MixtureFit",
    "MutualDistillationLoss",
    "PrototypeBank",
    "RobustTriplet",
    "SelfMimicLoss",
    "SoftIdentityLoss",
    "euclidean_dist",
    "fit_loss_mixture",
    "fit_visible_mixture",
    "gmm_confidence",
    "md_direction",
    "multi_kernel_mmd2",
    "per_sample_ce",
    "visible_view_confidences",
]
