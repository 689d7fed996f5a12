"""Sweep summary: one table and ``summary.json`` over the runs of a Hydra multirun.

A sweep dir holds one run dir per job (any dir with ``.hydra/overrides.yaml``). A run is "ok"
when it wrote ``metrics.json``, or when its ``status.json`` says "completed" without one (it was
told not to test, ``test_after_training=false``: listed per setting as "not tested"), "failed"
or "interrupted" when its ``status.json`` says so (a crash; SIGTERM or Ctrl-C), and
"incomplete" otherwise (still running, or killed outright). A job
the sweep planned (``jobs.json``, written when the sweep starts) that has no run dir is "not
run": the sweep had not reached it yet, or was stopped first. Runs are grouped into settings by
their overrides minus the trial axis (``group_out``); for every (mode/direction, feature) result
the summary holds the mean and the population std (ddof=0) over runs of each run's mean
metrics. Runs that did not finish are listed per setting with their status, never dropped.
Runs of one setting measured on different test lists (``test_data.lists_sha256`` of their
metrics.json differs, for the same RegDB split) are never averaged: the summary is refused,
naming the runs (:func:`check_test_lists`).

``python -m tskd.apps.report SWEEP_DIR [--quiet]`` rebuilds the summary at any time;
``SweepSummaryCallback`` does it from inside the sweep (registered in ``configs/hydra``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import re
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from tskd.core.errors import InputError
from tskd.core.files import write_text_atomic

log = logging.getLogger(__name__)

METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
HEADERS = ("R1", "R5", "R10", "R20", "mAP", "mINP")
MAX_DEPTH = 4  # run dirs are found this many levels below the sweep dir at most
RESULT_KEYS = ("dataset", "mode", "direction", "feature")
STATUSES = ("ok", "failed", "incomplete", "interrupted", "not_run")
PLAN_FILE = "jobs.json"  # the jobs a sweep was asked to run, written by SweepSummaryCallback


def _natural_key(text: str) -> list:
    # "10" must sort after "9": job dirs are numbered, not zero-padded.
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


def _find_run_dirs(root: Path) -> list[Path]:
    found = []
    for cur, dirs, _ in os.walk(root):
        here = Path(cur)
        if (here / ".hydra" / "overrides.yaml").is_file():
            found.append(here)
            dirs[:] = []  # a run's own subfolders (checkpoints, logs) hold no further runs
        elif len(here.relative_to(root).parts) >= MAX_DEPTH:
            dirs[:] = []
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value  # "+seed=1" and "seed=1" name the same key


def _run_results(metrics: Any, path: Path) -> list[dict]:
    """Validate a metrics.json object; returns its per-(setting, feature) summaries."""
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} holds {type(metrics).__name__}, expected an object")
    results = metrics.get("results", [metrics])
    if not isinstance(results, list) or not results:
        raise ValueError(f"{path}: 'results' must be a non-empty list")
    for res in results:
        mean = res.get("mean") if isinstance(res, dict) else None
        missing = [m for m in METRICS if not isinstance((mean or {}).get(m), (int, float))]
        if missing:
            raise ValueError(f"{path}: a result lacks numeric mean {missing}")
    return results


def _read_run(run_dir: Path, root: Path) -> dict:
    ov_file = run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(ov_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"cannot read {ov_file} ({e}); restore or delete that run dir") from e
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise InputError(f"{ov_file} is not a list of 'key=value' strings; restore or delete it")
    rec = {"dir": run_dir.relative_to(root).as_posix() or ".", "overrides": overrides,
           "status": "incomplete", "error": None, "metrics": None}
    met_file, st_file = run_dir / "metrics.json", run_dir / "status.json"
    stopped = None  # ("failed" | "interrupted", message) when status.json records either
    kind = None
    if st_file.is_file():
        try:
            st = json.loads(st_file.read_text())
        except (OSError, ValueError) as e:
            st = {"status": "failed", "error": f"unreadable status.json: {e}"}
        kind = st.get("status") if isinstance(st, dict) else None
        if kind in ("failed", "interrupted"):
            stopped = (kind, str(st.get("error") or f"{kind} (no message in status.json)"))
    # A stop newer than metrics.json (crash after the test) wins; metrics newer than the stop
    # means the run was resumed and finished.
    if stopped is not None and not (met_file.is_file()
                                    and met_file.stat().st_mtime > st_file.stat().st_mtime):
        rec.update(status=stopped[0], error=stopped[1])
    elif met_file.is_file():
        try:
            metrics = json.loads(met_file.read_text())
            _run_results(metrics, met_file)
            rec.update(status="ok", metrics=metrics)
        except (OSError, ValueError) as e:
            rec.update(status="failed", error=f"bad metrics.json: {e}")
    elif kind == "completed":  # finished, told not to test: complete, with no results
        rec.update(status="ok")
    return rec


def _runs(root: Path) -> list[dict]:
    if not root.is_dir():
        raise InputError(f"sweep dir {root} does not exist; pass the dir of a "
                           "`python train.py -m ...` sweep")
    return [_read_run(d, root) for d in _find_run_dirs(root)]


def _no_runs(root: Path) -> InputError:
    return InputError(f"no run dirs (with .hydra/overrides.yaml) found in {root}; pass the "
                        "sweep dir itself, not a run dir's parent or a single run dir's files")


def collect_runs(sweep_dir: str | os.PathLike) -> list[dict]:
    """Reads every run dir below ``sweep_dir``.

    Returns:
        Run records ``{"dir", "overrides", "status", "error", "metrics"}`` in job order; status
        is "ok", "failed", "interrupted" or "incomplete"; an "ok" run's metrics are None when
        it finished without a test.

    Raises:
        InputError: the dir is missing, holds no run dirs, or has a malformed overrides.yaml.
    """
    root = Path(sweep_dir)
    runs = _runs(root)
    if not runs:
        raise _no_runs(root)
    return runs


def read_plan(sweep_dir: str | os.PathLike) -> list[dict] | None:
    """The jobs the sweep was asked to run (``jobs.json``): ``[{"job", "overrides"}]``.

    None when the sweep dir has no plan (a sweep started before plans were written, or by a
    sweeper other than Hydra's basic one, whose jobs are not known in advance).

    Raises:
        InputError: ``jobs.json`` exists but is not such a list.
    """
    path = Path(sweep_dir) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        jobs = json.loads(path.read_text()).get("jobs")
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(f"cannot read {path} ({e}); delete it to summarise without the "
                           "list of planned jobs") from e
    if not isinstance(jobs, list) or not all(
            isinstance(j, dict) and isinstance(j.get("overrides"), list) for j in jobs):
        raise InputError(f"{path} is not a list of planned jobs; delete it to summarise "
                           "without the list of planned jobs")
    return jobs


def _not_run(runs: list[dict], plan: list[dict]) -> list[dict]:
    # A planned job ran when some run dir has the same overrides (in any order); a sweep may
    # repeat a job, so each run dir accounts for one planned job only.
    ran = Counter(tuple(sorted(r["overrides"])) for r in runs)
    missing = []
    for i, job in enumerate(plan):
        key = tuple(sorted(str(o) for o in job["overrides"]))
        if ran[key] > 0:
            ran[key] -= 1
        else:
            missing.append({"dir": None, "job": job.get("job", i),
                            "overrides": [str(o) for o in job["overrides"]],
                            "status": "not_run", "error": None, "metrics": None})
    return missing


def _trial(overrides: list[str], group_out: tuple[str, ...]) -> Any:
    picked = {k: yaml.safe_load(v) if v else v for k, v in map(_split, overrides)
              if k in group_out}
    return next(iter(picked.values())) if len(picked) == 1 else (picked or None)


def _setting_key(overrides: list[str], group_out: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(o for o in overrides if _split(o)[0] not in group_out))


def check_test_lists(runs: list[dict], group_out: tuple[str, ...], root: Path) -> None:
    """Refuse to average runs of one setting whose metrics.json name different test lists.

    Runs are compared within a setting and, where the trial chooses the lists (RegDB's
    splits, ``test_data.split``), within a split. Runs without ``test_data`` (older
    metrics.json) are not compared.

    Raises:
        InputError: Naming each setting, its runs per lists hash, and the fix.
    """
    seen: dict[tuple, dict[str, list]] = {}
    for run in runs:
        data = (run["metrics"] or {}).get("test_data") if run["status"] == "ok" else None
        if not isinstance(data, dict) or not isinstance(data.get("lists_sha256"), str):
            continue
        key = (_setting_key(run["overrides"], group_out), run["metrics"].get("dataset"),
               data.get("split"))
        seen.setdefault(key, {}).setdefault(data["lists_sha256"], []).append((run["dir"], data))
    problems = []
    for (setting, dataset, split), by_hash in seen.items():
        if len(by_hash) < 2:
            continue
        used = []
        for sha, found in by_hash.items():
            dirs, data = [d for d, _ in found], found[0][1]
            used.append(f"{'runs' if len(dirs) > 1 else 'run'} {', '.join(dirs)} used lists "
                        f"{sha[:12]} ({data.get('images')} images, {data.get('identities')} ids)")
        where = f"{dataset}" + (f" split {split}" if split is not None else "")
        problems.append(f"setting {' '.join(setting) or '(defaults)'} ({where}): "
                        + "; ".join(used))
    if problems:
        raise InputError(
            "cannot average runs measured on different test lists: " + " | ".join(problems)
            + ". The test lists changed between runs (e.g. a split file was edited): restore "
            f"the lists and re-run the runs that used the others, or move those runs out of "
            f"{root} to summarise the rest.")


def summarize_sweep(sweep_dir: str | os.PathLike,
                    group_out: tuple[str, ...] = ("dataset.trial", "seed")) -> dict:
    """Groups runs into settings and aggregates their metrics over the trial axis.

    Args:
        sweep_dir: the multirun dir.
        group_out: override keys that form the trial axis; all other overrides form a setting.

    Returns:
        A JSON-serialisable dict: ``counts`` (one per status in ``STATUSES``, and ``total``) and
        ``settings``, each with its ``overrides``, ``counts``, ``results`` (per
        dataset/mode/direction/feature: ``n``, ``trials``, ``runs``, ``mean`` and population std
        ``std`` (ddof=0) over runs of each run's mean metrics), the ``failed``/``interrupted``/
        ``incomplete`` runs with dir, trial and error, the ``not_run`` jobs with job number
        and trial, and the ``not_tested`` runs (ok, finished without a test) with dir and trial.

    Raises:
        InputError: No runs, or runs of one setting measured on different test lists
            (:func:`check_test_lists`).
    """
    root = Path(sweep_dir)
    runs, plan = _runs(root), read_plan(root)
    if not runs and not plan:
        raise _no_runs(root)
    runs += _not_run(runs, plan or [])
    check_test_lists(runs, group_out, root)
    settings: dict[tuple, dict] = {}
    for run in runs:
        ovs = list(_setting_key(run["overrides"], group_out))
        s = settings.setdefault(tuple(ovs), {
            "overrides": ovs, "counts": dict.fromkeys(STATUSES, 0), "results": {},
            **{k: [] for k in STATUSES if k != "ok"}, "not_tested": []})
        s["counts"][run["status"]] += 1
        trial = _trial(run["overrides"], group_out)
        if run["status"] == "not_run":
            s["not_run"].append({"job": run["job"], "trial": trial})
            continue
        if run["status"] != "ok":
            s[run["status"]].append({"dir": run["dir"], "trial": trial, "error": run["error"]})
            continue
        if run["metrics"] is None:  # finished without a test (test_after_training=false)
            s["not_tested"].append({"dir": run["dir"], "trial": trial})
            continue
        for res in _run_results(run["metrics"], Path(run["dir"])):
            key = tuple(res.get(k) for k in RESULT_KEYS)
            agg = s["results"].setdefault(key, {**dict(zip(RESULT_KEYS, key)), "trials": [],
                                                "runs": [], "values": []})
            agg["trials"].append(trial)
            agg["runs"].append(run["dir"])
            agg["values"].append(res["mean"])
    for s in settings.values():
        for agg in s["results"].values():
            vals = agg.pop("values")
            agg["n"] = len(vals)
            agg["mean"] = {m: statistics.fmean(v[m] for v in vals) for m in METRICS}
            agg["std"] = {m: statistics.pstdev([float(v[m]) for v in vals]) for m in METRICS}
        s["results"] = list(s["results"].values())
    counts = {k: sum(r["status"] == k for r in runs) for k in STATUSES}
    return {"sweep_dir": str(sweep_dir), "group_out": list(group_out),
            "std": "population std (ddof=0) over runs", "counts": {**counts, "total": len(runs)},
            "settings": list(settings.values())}


def format_summary(summary: dict) -> str:
    """Renders a summary as an aligned text table plus one line per run that did not finish."""
    head = ("setting", "result", "n", *HEADERS)
    rows, notes = [], []
    for s in summary["settings"]:
        label = " ".join(s["overrides"]) or "(defaults)"
        for r in s["results"]:
            name = " ".join(str(r[k]) for k in ("mode", "direction", "feature") if r.get(k))
            rows.append((label, name or "-", str(r["n"]),
                         *(f"{r['mean'][m]:.2f}±{r['std'][m]:.2f}" for m in METRICS)))
        if not s["results"]:
            what = "(trained, not tested)" if s.get("not_tested") else "(no finished run)"
            rows.append((label, what, "0", *("-" for _ in METRICS)))
        for f in s.get("not_tested", []):
            notes.append(f"NOT TESTED: run {f['dir']} (trial {f['trial']}, {label}): finished "
                         "with test_after_training=false; test it with python eval.py "
                         f"ckpt=<sweep dir>/{f['dir']}/checkpoints/last.ckpt")
        for kind in ("failed", "interrupted", "incomplete"):
            for f in s.get(kind, []):
                why = f": {f['error']}" if f.get("error") else ""
                notes.append(f"{kind.upper()}: run {f['dir']} (trial {f['trial']}, {label}){why}")
        for f in s.get("not_run", []):
            notes.append(f"NOT RUN: job {f['job']} (trial {f['trial']}, {label})")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in (head, *rows)]
    lines.insert(1, "-" * len(lines[0]))
    counts = {k: 0 for k in STATUSES} | summary["counts"]
    tail = ("runs: {ok} ok, {failed} failed, {incomplete} incomplete, {interrupted} interrupted, "
            "{not_run} not run").format(**counts)
    return "\n".join([*lines, *notes, tail]) + "\n"


def write_summary(sweep_dir: str | os.PathLike) -> Path:
    """Writes ``summary.json`` and ``summary.txt`` into the sweep dir; returns the json path."""
    root = Path(sweep_dir)
    summary = summarize_sweep(root)
    write_text_atomic(root / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(root / "summary.txt", format_summary(summary))
    return root / "summary.json"


def main(argv: list[str] | None = None) -> int:
    """Rebuilds SWEEP_DIR/summary.json and .txt, prints the table; exit 2 on a missing/empty dir."""
    parser = argparse.ArgumentParser(prog="python -m tskd.apps.report", description=main.__doc__)
    parser.add_argument("sweep_dir", help="the Hydra multirun dir of the sweep")
    parser.add_argument("--quiet", action="store_true", help="write the files, print nothing")
    args = parser.parse_args(argv)
    try:
        path = write_summary(args.sweep_dir)
    except (InputError, OSError) as e:
        sys.stderr.write(f"tskd.apps.report: error: {e}\n")
        return 2
    if not args.quiet:
        sys.stdout.write((path.parent / "summary.txt").read_text())
    return 0


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def plan_jobs(config: DictConfig) -> list[dict] | None:
    """The jobs Hydra's basic sweeper will run for this multirun config, in job order.

    Expands the command line's sweep overrides (and ``hydra.sweeper.params``) exactly as
    ``BasicSweeper.sweep`` does. None for another sweeper (an optimiser picks its jobs as it
    goes) or overrides this cannot expand without Hydra's config loader (``glob(...)`` over a
    config group).
    """
    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()]
    args += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    try:
        overrides = OverridesParser.create().parse_overrides(args)
        (jobs,) = BasicSweeper.split_arguments(overrides, None)  # one batch: all jobs
    except Exception as e:  # a summary without "not run" rows beats a sweep that will not start
        log.warning("sweep summary will not list jobs that never ran: cannot expand %s (%s)",
                    args, e)
        return None
    return [{"job": i, "overrides": list(job)} for i, job in enumerate(jobs)]


class SweepSummaryCallback(Callback):
    """Hydra callback that keeps ``summary.json``/``summary.txt`` of a multirun up to date.

    At the start it writes ``jobs.json``, the jobs the sweep will run, so that a summary lists
    the ones that never ran (the sweep was interrupted) as "not run". The files are rewritten
    after every job, so a sweep killed mid-way still has them. Hydra skips ``on_multirun_end``
    when a job raised (or SIGTERM/Ctrl-C stopped it, see :mod:`tskd.core.entry`), so the closing
    table is also logged from an ``atexit`` hook set in ``on_multirun_start``; whichever comes
    first does it, once.
    """

    def __init__(self) -> None:
        self._sweep_dir: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Absolute now: a job with hydra.job.chdir=true changes the working dir under us.
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        self._sweep_dir = str(sweep_dir)
        atexit.register(self._final)
        jobs = plan_jobs(config)
        if jobs is not None:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(sweep_dir / PLAN_FILE, json.dumps({"jobs": jobs}, indent=1) + "\n")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return  # a single run has no sweep to summarise
        status = Path(str(config.hydra.runtime.output_dir)) / "status.json"
        if job_return.status == JobStatus.FAILED and not status.exists():
            # The job failed before train.py could record it; say so rather than "incomplete".
            err = job_return._return_value  # the property re-raises; we only want the message
            msg = " ".join(f"{type(err).__name__}: {err}".split())
            write_text_atomic(status, json.dumps({"status": "failed", "error": msg}) + "\n")
        try:
            write_summary(self._sweep_dir or config.hydra.sweep.dir)
        except (InputError, OSError) as e:
            log.warning("sweep summary not updated: %s", e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._final()

    def _final(self) -> None:
        if self._sweep_dir is None:
            return
        sweep_dir, self._sweep_dir = self._sweep_dir, None
        atexit.unregister(self._final)
        try:
            path = write_summary(sweep_dir)
        except (InputError, OSError) as e:
            log.warning("sweep summary not written: %s", e)
            return
        log.info("sweep summary -> %s\n%s", path, path.with_suffix(".txt").read_text().rstrip())


if __name__ == "__main__":
    raise SystemExit(main())
