"""Reporting test summaries: the printed table and metrics.json.

Both say what the numbers were measured on (:func:`describe_test_data`): the test lists' size,
identities and hash, and each setting's query and gallery counts. The same model scores very
differently on 3 test identities than on 96, and nothing else in metrics.json would show it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from tskd.core.errors import InputError
from tskd.core.files import write_json_atomic
from tskd.data import registry
from tskd.data.protocol import TestProtocol
from tskd.metrics.search import METRIC_KEYS, setting_of


def _one_or_each(values: list[int]) -> int | list[int]:
    """A count that is the same in every trial as one int, else the list of them."""
    return values[0] if len(set(values)) == 1 else values


def describe_test_data(protocol: TestProtocol, root: str | os.PathLike) -> dict:
    """metrics.json's ``test_data``: what a test measured, to tell two tests' data apart.

    Args:
        protocol: The test protocol the results come from.
        root: The dataset root; paths are hashed relative to it, so moved data keeps its hash.

    Returns:
        ``lists_sha256``: SHA-256 of the test list, one line per image in order (path relative
        to ``root``, identity, camera, modality); ``split``: the trial the lists belong to
        where the trial chooses them (RegDB's split), else None; ``images`` and ``identities``
        of the list; ``settings``: per setting, ``queries``, ``query_ids``, ``gallery`` and
        ``gallery_ids``, each an int when all its trials agree, else one per trial.
    """
    digest = hashlib.sha256()
    for path, pid, cam, mod in zip(protocol.paths, protocol.pids, protocol.cams,
                                   protocol.modality):
        rel = os.fsencode(os.path.relpath(path, root)).replace(os.sep.encode(), b"/")
        digest.update(rel + f"\t{pid}\t{cam}\t{mod}\n".encode())
    settings: dict[str, dict] = {}
    for setting in protocol.settings():
        searches = [s for s in protocol.searches if s.setting == setting]
        counts = {"queries": [len(s.query) for s in searches],
                  "query_ids": [len(np.unique(protocol.pids[s.query])) for s in searches],
                  "gallery": [len(s.gallery) for s in searches],
                  "gallery_ids": [len(np.unique(protocol.pids[s.gallery])) for s in searches]}
        settings[setting] = {k: _one_or_each([int(x) for x in v]) for k, v in counts.items()}
    trials = sorted({int(s.trial) for s in protocol.searches})
    split = trials[0] if registry.get(protocol.dataset).trial_selects_training and trials \
        else None
    return {"lists_sha256": digest.hexdigest(), "split": split, "images": len(protocol.paths),
            "identities": int(len(np.unique(protocol.pids))), "settings": settings}


def _span(value: int | list[int]) -> str:
    return str(value) if isinstance(value, int) else f"{min(value)}-{max(value)}"


def test_data_line(data: dict) -> str:
    """The table's line about the test data: lists hash and size, each setting's counts."""
    parts = [f"{setting}: {_span(c['queries'])} queries ({_span(c['query_ids'])} ids), "
             f"gallery {_span(c['gallery'])} ({_span(c['gallery_ids'])} ids)"
             for setting, c in data["settings"].items()]
    split = f" (split {data['split']})" if data.get("split") is not None else ""
    return "; ".join([f"test lists {data['lists_sha256'][:12]}{split}: {data['images']} images, "
                      f"{data['identities']} ids", *parts])


def format_table(summaries: list[dict], options: dict | None = None,
                 test_data: dict | None = None) -> str:
    """A printable table: one row per setting x feature, ``mean±std`` per metric.

    A setting its dataset annotates (``DatasetProtocol.notes``, e.g. LLCM's visible2infrared,
    which DEEN computes with the infrared images as queries) is starred, with the note below.
    With ``test_data`` (:func:`describe_test_data`) the second line says what was measured.
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
    lines = ["; ".join([head, *flags]), *([test_data_line(test_data)] if test_data else []),
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
