"""TSKD losses: soft-identity CE with GMM confidences, batch-hard triplet, self-mimic, MD."""

from tskd.losses.confidence import gmm_confidence, visible_view_confidences
from tskd.losses.mmd import MutualDistillationLoss, md_direction, multi_kernel_mmd2
from tskd.losses.self_mimic import PrototypeBank, SelfMimicLoss
from tskd.losses.soft_identity import SoftIdentityLoss, per_sample_ce
from tskd.losses.triplet import BatchHardTriplet, euclidean_dist

__all__ = [
    "BatchHardTriplet",
    "MutualDistillationLoss",
    "PrototypeBank",
    "SelfMimicLoss",
    "SoftIdentityLoss",
    "euclidean_dist",
    "gmm_confidence",
    "md_direction",
    "multi_kernel_mmd2",
    "per_sample_ce",
    "visible_view_confidences",
]
