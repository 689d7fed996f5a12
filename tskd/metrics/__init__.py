"""Retrieval metrics: the protocol maths (functional), searches and summaries of a protocol
(search) and the DDP-safe accumulator (retrieval)."""

from tskd.metrics.functional import (
    RULES,
    evaluate,
    evaluate_llcm,
    evaluate_regdb,
    evaluate_sysu,
    per_query,
    ranked_order,
    removed_mask,
)

__all__ = ["RULES", "evaluate", "evaluate_llcm", "evaluate_regdb", "evaluate_sysu", "per_query",
           "ranked_order", "removed_mask"]
