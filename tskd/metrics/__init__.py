"""Retrieval metrics: the protocol maths (functional), searches and summaries of a protocol
(search) and the DDP-safe accumulator (retrieval)."""

from tskd.metrics.functional import (
    RULES,
    evaluate_llcm,
    evaluate_regdb,
    evaluate_sysu,
    metrics_by_rule,
    per_query,
    ranked_order,
    removed_mask,
)

__all__ = ["RULES", "evaluate_llcm", "evaluate_regdb", "evaluate_sysu", "metrics_by_rule",
           "per_query", "ranked_order", "removed_mask"]
