"""Tests of tskd.apps.report: sweep summaries from hand-written run dirs, the CLI, the Hydra
callback."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tskd.apps.report import collect_runs, format_summary, main, summarize_sweep, write_summary
from tskd.core.errors import InputError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # subprocesses import tskd from this checkout
NAN_ERROR = "NonFiniteLossError: loss is nan at step 7"


def _summary(direction, feature, rank1, m_ap, trial=1):
    # Only rank1 and mAP vary; the other metrics are fixed so their std must come out 0.
    mean = {"rank1": rank1, "rank5": 95.0, "rank10": 97.0, "rank20": 99.0, "mAP": m_ap,
            "mINP": 50.0}
    return {"dataset": "regdb", "mode": None, "direction": direction, "feature": feature,
            "trials": [{"trial": trial, **mean}], "mean": mean, "std": dict.fromkeys(mean, 0.0)}


def _run(root, name, overrides, metrics=None, status=None):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    for name, obj in (("metrics.json", metrics), ("status.json", status)):
        if obj is not None:
            (d / name).write_text(json.dumps(obj))
    return d


def _regdb_metrics(trial, r1_v2t, map_v2t, r1_t2v, map_t2v):
    results = [_summary("visible2thermal", "fc", r1_v2t, map_v2t, trial),
               _summary("thermal2visible", "fc", r1_t2v, map_t2v, trial)]
    return {**results[0], "results": results}


@pytest.fixture
def sweep(tmp_path):
    """Two settings: md_w=0.02 over trials 1-3, md_w=0.05 over trials 1-2 (one failed, trial 3)."""
    root = tmp_path / "sweep"
    # md_w=0.02: v2t rank1 80/82/84 mAP 70/71/75; t2v rank1 78/78/81 mAP 60/66/63
    for job, (t, a, b, c, d) in enumerate([(1, 80, 70, 78, 60), (2, 82, 71, 78, 66),
                                           (3, 84, 75, 81, 63)]):
        _run(root, str(job), ["dataset=regdb", f"dataset.trial={t}", "loss.md_w=0.02"],
             _regdb_metrics(t, a, b, c, d))
    # md_w=0.05: v2t rank1 90/94 mAP 80/81; t2v rank1 88/86 mAP 70/70
    for job, (t, a, b, c, d) in zip((3, 4), [(1, 90, 80, 88, 70), (2, 94, 81, 86, 70)]):
        _run(root, str(job), ["dataset=regdb", f"dataset.trial={t}", "loss.md_w=0.05"],
             _regdb_metrics(t, a, b, c, d))
    # The failed run carries absurd metrics too: they must not leak into the means.
    _run(root, "5", ["dataset=regdb", "dataset.trial=3", "loss.md_w=0.05"],
         _regdb_metrics(3, 0, 0, 0, 0),
         {"status": "failed", "error": NAN_ERROR})
    return root


def _setting(summary, md_w):
    (s,) = [s for s in summary["settings"] if f"loss.md_w={md_w}" in s["overrides"]]
    return s


def _result(setting, direction):
    (r,) = [r for r in setting["results"] if r["direction"] == direction]
    return r


def test_means_and_population_stds_per_setting_and_direction(sweep):
    summary = summarize_sweep(sweep)
    assert summary["counts"] == {"ok": 5, "failed": 1, "incomplete": 0, "interrupted": 0,
                                 "not_run": 0, "total": 6}
    assert len(summary["settings"]) == 2
    s02 = _setting(summary, "0.02")
    assert s02["overrides"] == ["dataset=regdb", "loss.md_w=0.02"]
    v2t, t2v = _result(s02, "visible2thermal"), _result(s02, "thermal2visible")
    assert v2t["n"] == 3 and v2t["trials"] == [1, 2, 3] and v2t["runs"] == ["0", "1", "2"]
    assert v2t["feature"] == "fc" and v2t["dataset"] == "regdb"
    assert v2t["mean"]["rank1"] == pytest.approx(82.0)
    assert v2t["std"]["rank1"] == pytest.approx(math.sqrt(8 / 3))  # ddof=0: (4+0+4)/3
    assert v2t["mean"]["mAP"] == pytest.approx(72.0)
    assert v2t["std"]["mAP"] == pytest.approx(math.sqrt(14 / 3))  # (4+1+9)/3
    assert v2t["mean"]["rank20"] == pytest.approx(99.0) and v2t["std"]["rank20"] == 0.0
    assert t2v["mean"]["rank1"] == pytest.approx(79.0)
    assert t2v["std"]["rank1"] == pytest.approx(math.sqrt(2.0))  # (1+1+4)/3
    assert t2v["mean"]["mAP"] == pytest.approx(63.0) and t2v["std"]["mAP"] == pytest.approx(
        math.sqrt(6.0))  # (9+9+0)/3
    s05 = _setting(summary, "0.05")
    v2t = _result(s05, "visible2thermal")
    assert v2t["n"] == 2 and v2t["trials"] == [1, 2]
    assert v2t["mean"]["rank1"] == pytest.approx(92.0) and v2t["std"]["rank1"] == pytest.approx(2)
    assert v2t["mean"]["mAP"] == pytest.approx(80.5) and v2t["std"]["mAP"] == pytest.approx(0.5)
    assert _result(s05, "thermal2visible")["mean"]["rank1"] == pytest.approx(87.0)
    json.dumps(summary)  # must be JSON-serialisable as is


def test_failed_run_is_listed_with_trial_and_error_and_excluded(sweep):
    s05 = _setting(summarize_sweep(sweep), "0.05")
    assert s05["counts"] == {"ok": 2, "failed": 1, "incomplete": 0, "interrupted": 0,
                             "not_run": 0}
    assert s05["failed"] == [{"dir": "5", "trial": 3, "error": NAN_ERROR}]
    text = format_summary(summarize_sweep(sweep))
    assert "FAILED: run 5 (trial 3, dataset=regdb loss.md_w=0.05): NonFiniteLossError" in text
    assert "runs: 5 ok, 1 failed, 0 incomplete" in text
    records = {r["dir"]: r for r in collect_runs(sweep)}
    assert records["5"]["status"] == "failed" and records["5"]["metrics"] is None
    assert records["0"]["status"] == "ok" and records["0"]["error"] is None


def test_table_rows_are_aligned_and_show_mean_pm_std(sweep):
    lines = format_summary(summarize_sweep(sweep)).splitlines()
    assert lines[0].split() == ["setting", "result", "n", "R1", "R5", "R10", "R20", "mAP", "mINP"]
    rows = [ln for ln in lines if "loss.md_w=" in ln and not ln.startswith("FAILED")]
    assert len(rows) == 4  # 2 settings x 2 directions
    assert len({len(r) for r in [lines[0], *rows]}) == 1  # header and rows share widths
    row = next(r for r in rows if "0.02" in r and "visible2thermal" in r)
    assert row.split()[-8:-4] == ["fc", "3", "82.00±1.63", "95.00±0.00"]
    assert row.index("82.00±1.63") + 10 == lines[0].index("R1") + 2  # right-aligned under R1


def test_partial_sweep_in_process_and_files_written(tmp_path, capsys):
    root = tmp_path / "partial"
    _run(root, "0", ["dataset=regdb", "dataset.trial=1"], _regdb_metrics(1, 80, 70, 78, 60))
    _run(root, "1", ["dataset=regdb", "dataset.trial=2"])  # running or cut off
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "INCOMPLETE: run 1 (trial 2, dataset=regdb)" in out
    assert "runs: 1 ok, 0 failed, 1 incomplete" in out
    saved = json.loads((root / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summarize_sweep(root)))
    assert saved["settings"][0]["incomplete"] == [{"dir": "1", "trial": 2, "error": None}]
    assert (root / "summary.txt").read_text() == out
    assert sorted(p.name for p in root.iterdir()) == ["0", "1", "summary.json", "summary.txt"]
    assert main([str(root), "--quiet"]) == 0 and capsys.readouterr().out == ""
    assert write_summary(root) == root / "summary.json"


@pytest.mark.e2e
def test_cli_subprocess_on_partial_sweep(tmp_path):
    root = tmp_path / "partial"
    _run(root, "0", ["dataset.trial=1"], _regdb_metrics(1, 80, 70, 78, 60))
    _run(root, "1", ["dataset.trial=2"], _regdb_metrics(2, 90, 70, 78, 60))
    _run(root, "2", ["dataset.trial=3"])
    proc = subprocess.run([sys.executable, "-m", "tskd.apps.report", str(root)],
                          capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "85.00±5.00" in proc.stdout and "INCOMPLETE: run 2 (trial 3, (defaults))" in proc.stdout
    assert json.loads((root / "summary.json").read_text())["counts"]["incomplete"] == 1


def test_error_paths_name_the_dir(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    empty = tmp_path / "empty"
    (empty / "0").mkdir(parents=True)
    assert main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "no run dirs" in err
    assert not (empty / "summary.json").exists()
    with pytest.raises(InputError, match="does not exist"):
        collect_runs(missing)
    bad = _run(tmp_path / "bad", "0", [])
    (bad / ".hydra" / "overrides.yaml").write_text("dataset.trial: 1\n")
    with pytest.raises(InputError, match=r"0/\.hydra/overrides\.yaml is not a list"):
        summarize_sweep(tmp_path / "bad")


def test_malformed_metrics_is_a_failed_run_not_a_crash(tmp_path):
    _run(tmp_path, "0", ["dataset.trial=1"], {"mean": {"rank1": 1.0}})
    (rec,) = collect_runs(tmp_path)
    assert rec["status"] == "failed" and "rank5" in rec["error"] and "metrics.json" in rec["error"]


def test_top_level_summary_without_results_and_seed_axis(tmp_path):
    # A metrics.json without "results" is one summary; seed is on the trial axis by default.
    for job, (seed, r1) in enumerate([(1, 60.0), (2, 70.0)]):
        _run(tmp_path, f"grp/{job}", ["dataset=sysu", f"seed={seed}"],
             {**_summary("infrared2visible", "pool", r1, 50.0), "dataset": "sysu", "mode": "all"})
    (setting,) = summarize_sweep(tmp_path)["settings"]
    (res,) = setting["results"]
    assert setting["overrides"] == ["dataset=sysu"] and res["trials"] == [1, 2]
    assert (res["mode"], res["direction"], res["feature"]) == ("all", "infrared2visible", "pool")
    assert res["mean"]["rank1"] == pytest.approx(65.0) and res["std"]["rank1"] == pytest.approx(5)
    assert res["runs"] == ["grp/0", "grp/1"]
    # Without grouping out the seed, each seed is its own setting.
    assert len(summarize_sweep(tmp_path, group_out=("dataset.trial",))["settings"]) == 2


def test_job_order_is_numeric_and_resumed_run_counts_ok(tmp_path):
    for job in range(11):
        _run(tmp_path, str(job), [f"dataset.trial={job}"], _regdb_metrics(job, 80, 70, 78, 60))
    assert [r["dir"] for r in collect_runs(tmp_path)][-3:] == ["8", "9", "10"]
    # status.json older than metrics.json: the run was resumed after a crash and finished.
    status = tmp_path / "3" / "status.json"
    status.write_text(json.dumps({"status": "failed", "error": "killed"}))
    old = status.stat().st_mtime - 100
    os.utime(status, (old, old))
    assert collect_runs(tmp_path)[3]["status"] == "ok"
    os.utime(status)  # newer failure (crash after the test) wins
    assert collect_runs(tmp_path)[3]["status"] == "failed"


APP = '''
import json
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def app(cfg):
    if cfg.dataset.trial == 2:
        raise RuntimeError("boom on trial 2")
    if cfg.dataset.trial == 4:
        os._exit(3)  # killed: no Python clean-up, no atexit
    out = Path(HydraConfig.get().runtime.output_dir)
    mean = {"rank1": 80.0 + cfg.dataset.trial, "rank5": 90.0, "rank10": 95.0, "rank20": 99.0,
            "mAP": 70.0, "mINP": 50.0}
    (out / "metrics.json").write_text(json.dumps(
        {"dataset": "regdb", "mode": None, "direction": "visible2thermal", "feature": "fc",
         "trials": [], "mean": mean, "std": mean}))


if __name__ == "__main__":
    app()
'''

CONFIG = """
dataset: {trial: 1}
loss: {md_w: 0.1}
hydra:
  job: {chdir: false}
  sweep: {subdir: "${hydra.job.num}"}
  callbacks:
    sweep_summary:
      _target_: tskd.apps.report.SweepSummaryCallback
"""


def _hydra_sweep(tmp_path, name, trials, multirun=True):
    sweep_dir = tmp_path / name
    cmd = [sys.executable, str(tmp_path / "app.py"), *(["-m"] if multirun else []),
           f"dataset.trial={trials}", f"hydra.sweep.dir={sweep_dir}", f"hydra.run.dir={sweep_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=60)
    return proc, sweep_dir


@pytest.fixture
def app_dir(tmp_path):
    """A throwaway @hydra.main app whose config registers SweepSummaryCallback."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "config.yaml").write_text(CONFIG)
    return tmp_path


@pytest.mark.e2e
def test_hydra_multirun_callback_writes_summary_and_logs_table(app_dir):
    proc, sweep_dir = _hydra_sweep(app_dir, "ok_sweep", "1,3")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((sweep_dir / "summary.json").read_text())
    (res,) = summary["settings"][0]["results"]
    assert summary["counts"]["ok"] == 2 and res["mean"]["rank1"] == pytest.approx(82.0)
    assert "82.00±1.00" in proc.stdout + proc.stderr  # the closing table is logged
    assert (sweep_dir / "summary.txt").read_text().startswith("setting")


@pytest.mark.e2e
def test_hydra_sweep_with_raising_job_still_summarised(app_dir):
    # Hydra runs the remaining jobs, then re-raises (exit 1) and skips on_multirun_end; the
    # summary must still list the failure and the later job.
    proc, sweep_dir = _hydra_sweep(app_dir, "failing_sweep", "1,2,3")
    assert proc.returncode == 1 and "boom on trial 2" in proc.stderr
    assert (sweep_dir / "2" / "metrics.json").is_file()  # trial 3 ran after the failure
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"] == {"ok": 2, "failed": 1, "incomplete": 0, "interrupted": 0,
                                 "not_run": 0, "total": 3}
    assert summary["settings"][0]["failed"] == [
        {"dir": "1", "trial": 2, "error": "RuntimeError: boom on trial 2"}]
    assert "FAILED: run 1 (trial 2" in proc.stdout + proc.stderr
    # status.json written by the callback, since this app (unlike train.py) writes none itself
    assert json.loads((sweep_dir / "1" / "status.json").read_text())["status"] == "failed"


@pytest.mark.e2e
def test_hydra_sweep_killed_mid_way_and_single_run(app_dir):
    # Killed during the third job: the summary written after the second job survives, and
    # tskd.apps.report afterwards shows the killed run as incomplete.
    proc, sweep_dir = _hydra_sweep(app_dir, "killed_sweep", "1,2,4")
    assert proc.returncode == 3
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"] == {"ok": 1, "failed": 1, "incomplete": 0, "interrupted": 0,
                                 "not_run": 1, "total": 3}  # job 2 had not started then
    assert main([str(sweep_dir), "--quiet"]) == 0
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["settings"][0]["incomplete"] == [{"dir": "2", "trial": 4, "error": None}]
    # A single run (no -m) writes no sweep summary.
    proc, run_dir = _hydra_sweep(app_dir, "single_run", "1", multirun=False)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "metrics.json").is_file() and not (run_dir / "summary.json").exists()


def test_interrupted_and_not_run_jobs_are_listed(tmp_path, capsys):
    root = tmp_path / "stopped"
    _run(root, "0", ["dataset.trial=1"], _regdb_metrics(1, 80, 70, 78, 60))
    _run(root, "1", ["dataset.trial=2"], None,
         {"status": "interrupted", "signal": "SIGTERM", "error": "interrupted by SIGTERM"})
    # the plan names trial 2 with its overrides in another order: still the same job
    plan = [["dataset.trial=1"], ["dataset.trial=2"], ["dataset.trial=3"], ["dataset.trial=4"]]
    (root / "jobs.json").write_text(json.dumps(
        {"jobs": [{"job": i, "overrides": ovs} for i, ovs in enumerate(plan)]}))
    summary = summarize_sweep(root)
    assert summary["counts"] == {"ok": 1, "failed": 0, "incomplete": 0, "interrupted": 1,
                                 "not_run": 2, "total": 4}
    (s,) = summary["settings"]
    assert s["interrupted"] == [{"dir": "1", "trial": 2, "error": "interrupted by SIGTERM"}]
    assert s["not_run"] == [{"job": 2, "trial": 3}, {"job": 3, "trial": 4}]
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "INTERRUPTED: run 1 (trial 2, (defaults)): interrupted by SIGTERM" in out
    assert "NOT RUN: job 2 (trial 3, (defaults))" in out and "NOT RUN: job 3 (trial 4" in out
    assert "runs: 1 ok, 0 failed, 0 incomplete, 1 interrupted, 2 not run" in out
    # A plan but no run dir yet (stopped before the first job): every job is "not run".
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "jobs.json").write_text(json.dumps({"jobs": [{"job": 0, "overrides": ["a=1"]}]}))
    assert summarize_sweep(fresh)["counts"]["not_run"] == 1
    (fresh / "jobs.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="jobs.json"):
        summarize_sweep(fresh)


STOPPING_APP = '''
import json
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from tskd.core.entry import guarded, record_failure


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def app(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    with record_failure(out):
        if cfg.dataset.trial == 5:
            os.kill(os.getpid(), getattr(signal, os.environ["STOP_SIGNAL"]))
            raise AssertionError("the signal did not stop the job")
        mean = dict.fromkeys(("rank1", "rank5", "rank10", "rank20", "mAP", "mINP"), 50.0)
        (out / "metrics.json").write_text(json.dumps({"mean": mean}))


if __name__ == "__main__":
    sys.exit(guarded(app))
'''


@pytest.mark.e2e
@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_hydra_sweep_stopped_by_a_signal(tmp_path, sig, code):
    # A signal during the second of three jobs: exit 128+signal, that job "interrupted" with the
    # signal's name, the third "not run" in the summary written on the way out.
    (tmp_path / "app.py").write_text(STOPPING_APP)
    (tmp_path / "config.yaml").write_text(CONFIG)
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, str(tmp_path / "app.py"), "-m", "dataset.trial=1,5,3",
                           f"hydra.sweep.dir={sweep_dir}"], capture_output=True, text=True,
                          env={**ENV, "STOP_SIGNAL": sig}, cwd=tmp_path, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert f"interrupted by {sig}; exit status {code}" in proc.stderr
    status = json.loads((sweep_dir / "1" / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == sig
    assert not (sweep_dir / "2").exists()
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"] == {"ok": 1, "failed": 0, "incomplete": 0, "interrupted": 1,
                                 "not_run": 1, "total": 3}
    (s,) = summary["settings"]
    assert s["not_run"] == [{"job": 2, "trial": 3}]
    logged = proc.stdout + proc.stderr  # the closing table, from the atexit hook
    assert f"INTERRUPTED: run 1 (trial 5, (defaults)): interrupted by {sig}" in logged
    assert "NOT RUN: job 2 (trial 3, (defaults))" in (sweep_dir / "summary.txt").read_text()


def _lists(sha: str, split, ids: int) -> dict:
    """A metrics.json ``test_data`` block: lists hash, RegDB split, sizes."""
    return {"lists_sha256": sha * 64, "split": split, "images": 10 * ids, "identities": ids,
            "settings": {}}


def test_runs_on_different_test_lists_are_not_averaged(tmp_path, capsys):
    root = tmp_path / "sweep"
    # RegDB: every split has its own test lists, so runs over the trial axis differ by design
    for job, (t, sha) in enumerate([(1, "a"), (2, "b")]):
        _run(root, str(job), ["dataset=regdb", f"dataset.trial={t}"],
             {**_regdb_metrics(t, 80, 70, 78, 60), "test_data": _lists(sha, t, 206)})
    _run(root, "3", ["dataset=regdb", "dataset.trial=1", "seed=4"],  # older: no test_data
         _regdb_metrics(1, 80, 70, 78, 60))
    assert summarize_sweep(root)["counts"]["ok"] == 3
    # a second run of split 1 (another seed: the same setting) measured on other split-1 lists
    _run(root, "2", ["dataset=regdb", "dataset.trial=1", "seed=5"],
         {**_regdb_metrics(1, 90, 80, 88, 70), "test_data": _lists("c", 1, 3)})
    with pytest.raises(InputError, match="different test lists") as err:
        summarize_sweep(root)
    msg = str(err.value)
    assert f"run 0 used lists {'a' * 12} (2060 images, 206 ids)" in msg
    assert f"run 2 used lists {'c' * 12} (30 images, 3 ids)" in msg
    assert "run 1" not in msg and "run 3" not in msg and "split 1" in msg
    assert "restore the lists" in msg and str(root) in msg
    assert main([str(root)]) == 2
    assert "different test lists" in capsys.readouterr().err
