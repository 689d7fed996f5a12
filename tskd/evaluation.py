"""The test engine in one import: embed a protocol once, run its searches, report.

Each job has its own module, imported in this order and never back: embedding
(:mod:`tskd.embedding`), searches and summaries (:mod:`tskd.metrics.search`), the printed table
and metrics.json (:mod:`tskd.results`). This module only gathers them for callers that want the
whole engine; nothing in the package imports it.

Off-by-default options, printed with the results whenever used: flip test-time augmentation
(average the features of the image and its mirror) and k-reciprocal re-ranking.
"""

from __future__ import annotations

from tskd.embedding import EmbedFn, embed_protocol, flip_averaged
from tskd.metrics.search import (
    FEATURES,
    METRIC_KEYS,
    RANKS,
    evaluate_features,
    setting_of,
    summarize,
)
from tskd.results import format_table, metrics_document, write_metrics_json

__all__ = ["EmbedFn", "FEATURES", "METRIC_KEYS", "RANKS", "embed_protocol", "evaluate_features",
           "flip_averaged", "format_table", "metrics_document", "setting_of", "summarize",
           "write_metrics_json"]
