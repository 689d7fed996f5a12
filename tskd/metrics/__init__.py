"""Retrieval metrics: the protocol maths (functional) and the DDP-safe accumulator (retrieval)."""

from tskd.metrics.functional import evaluate_llcm, evaluate_regdb, evaluate_sysu

__all__ = ["evaluate_llcm", "evaluate_regdb", "evaluate_sysu"]
