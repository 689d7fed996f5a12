"""Building blocks of the TSKD network; :class:`TwoStreamNet` is the assembled model."""

from tskd.models.components.network import TwoStreamNet

__all__ = ["TwoStreamNet"]
