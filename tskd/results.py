"""Reporting test summaries: the printed table and metrics.json."""

from __future__ import annotations

from pathlib import Path

from tskd.data import registry
from tskd.errors import InputError
from tskd.files import write_json_atomic
from tskd.metrics.search import METRIC_KEYS, setting_of


def format_table(summaries: list[dict], options: dict | None = None) -> str:
    """A printable table: one row per setting x feature, ``mean±std`` per metric.

    A setting its dataset annotates (``DatasetProtocol.notes``, e.g. LLCM's visible2infrared,
    which DEEN computes with the infrared images as queries) is starred, with the note below.
    """
    options = options or {}
    trials = max((len(s["trials"]) for s in summaries), default=0)
    dataset = summaries[0]["dataset"] if summaries else None
    notes = registry.get(dataset).notes if dataset else {}
    head = f"{dataset or '?'} test, {trials} trial(s)"
    flags = [label for key, label in (("flip", "flip TTA: on"), ("rerank", "re-ranking: on"))
             if options.get(key)]
    names = [setting_of(s) + ("*" if setting_of(s) in notes else "") for s in summaries]
    width = max([16] + [len(n) + 1 for n in names])
    lines = ["; ".join([head, *flags]),
             f"{'setting':<{width}}{'feature':<8}" + "".join(
                 f"{k:>14}" for k in ("R1", "R5", "R10", "R20", "mAP", "mINP"))]
    for name, s in zip(names, summaries):
        cells = "".join(f"{s['mean'][k]:>8.2f}±{s['std'][k]:<5.2f}" for k in METRIC_KEYS)
        lines.append(f"{name:<{width}}{s['feature']:<8}{cells}".rstrip())
    shown = dict.fromkeys(setting_of(s) for s in summaries)
    lines += [f"* {setting} ({notes[setting]})" for setting in shown if setting in notes]
    return "\n".join(lines)


def metrics_document(summaries: list[dict], primary_setting: str, options: dict | None = None,
                     extra: dict | None = None) -> dict:
    """metrics.json's dict: the primary ("fc") summary at top level, all results, options, extra.

    Raises:
        InputError: No "fc" summary of ``primary_setting``.
    """
    primary = [s for s in summaries if setting_of(s) == primary_setting and s["feature"] == "fc"]
    if not primary:
        have = sorted({setting_of(s) for s in summaries})
        raise InputError(f"no 'fc' summary for setting {primary_setting!r}; have {have}")
    options = options or {}
    return {**primary[0], "results": summaries,
            "options": {"flip": bool(options.get("flip")), "rerank": bool(options.get("rerank"))},
            **(extra or {})}


def write_metrics_json(path: str | Path, summaries: list[dict], primary_setting: str,
                       options: dict | None = None, extra: dict | None = None) -> dict:
    """Write metrics.json (see :func:`metrics_document`) atomically; returns its dict."""
    doc = metrics_document(summaries, primary_setting, options, extra)
    write_json_atomic(path, doc)
    return doc
