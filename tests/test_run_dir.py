"""Two runs never share a folder: a run dir that holds a run, or that a live run is writing, is
refused at start (issue 20, item 1).

The refusals come before the config is used at all, so these runs need no data and no torch:
each command here either stops at once with the message, or (where the folder is free) goes on
to fail on a checkpoint that does not exist, which proves it got past the folder check.
The sweep case (two sweeps given one ``hydra.sweep.dir``) is in tests/test_sweep.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.entry_runs import REPO

from tskd.core.errors import ConfigError
from tskd.runner.run_dir import LOCK_FILE, claim, release

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _entry(script: str, run_dir: Path, ckpt: Path | None = None) -> subprocess.CompletedProcess:
    """``python <script> ckpt=<missing file> hydra.run.dir=<run_dir>``, never reading data."""
    ckpt = ckpt or run_dir.parent / "missing.ckpt"
    args = [sys.executable, str(REPO / script), f"ckpt={ckpt}", f"hydra.run.dir={run_dir}"]
    return subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def _finished_run(folder: Path) -> dict[str, bytes]:
    """A run dir as train.py leaves it (its config, metrics); returns every file's bytes."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (folder / "metrics.json").write_text('{"mean": {"rank1": 7.9}}\n')
    return _contents(folder)


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.e2e
@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_run_dir_that_holds_a_run_is_refused(tmp_path, script):
    run = tmp_path / "run"
    before = _finished_run(run)
    proc = _entry(script, run)
    assert proc.returncode == 1, proc.stderr
    assert f"hydra.run.dir={run} already holds a run" in proc.stderr
    assert "Pass another hydra.run.dir=<new folder>" in proc.stderr  # the way on
    assert "leave hydra.run.dir out" in proc.stderr
    assert _contents(run) == before  # no log, no status.json, no config written over it


@pytest.mark.e2e
def test_run_dir_being_written_by_a_live_run_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (run / LOCK_FILE).write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname()}))
        before = _contents(run)
        proc = _entry("train.py", run)
    finally:
        owner.kill()
        owner.wait()
    assert proc.returncode == 1, proc.stderr
    assert f"hydra.run.dir={run} is being written by a live run (pid {owner.pid}" in proc.stderr
    assert _contents(run) == before


@pytest.mark.e2e
def test_lock_of_a_dead_process_does_not_block_an_empty_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = {"pid": int(gone.stdout), "host": socket.gethostname()}
    (run / LOCK_FILE).write_text(json.dumps(dead))
    proc = _entry("eval.py", run)
    assert proc.returncode == 1 and "does not exist" in proc.stderr, proc.stderr
    status = json.loads((run / "status.json").read_text())  # the run got past the check
    assert status["status"] == "failed" and "missing.ckpt does not exist" in status["error"]
    assert not (run / LOCK_FILE).exists()  # released when the process ended


@pytest.mark.e2e
def test_two_runs_started_together_on_one_dir_one_is_refused(tmp_path):
    run = tmp_path / "run"
    args = [[sys.executable, str(REPO / "eval.py"), f"ckpt={tmp_path / 'missing.ckpt'}",
             f"hydra.run.dir={run}"]] * 2
    procs = [subprocess.Popen(a, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in args]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    refused = [e for e in errs if f"hydra.run.dir={run} " in e and "Pass another" in e]
    ran = [e for e in errs if "missing.ckpt does not exist" in e]
    assert len(refused) == 1 and len(ran) == 1, errs  # whichever came first, only one ran


@pytest.mark.e2e
def test_only_a_training_resume_may_use_its_own_run_dir(tmp_path):
    run = tmp_path / "run"
    before = _finished_run(run)
    ckpt = run / "checkpoints" / "last.ckpt"  # (missing: each stops right after the check)
    refused = _entry("eval.py", run, ckpt)  # an evaluation would replace its metrics.json
    assert f"hydra.run.dir={run} already holds a run" in refused.stderr, refused.stderr
    assert _contents(run) == before
    resumed = _entry("train.py", run, ckpt)  # continues that run in its folder
    assert "last.ckpt does not exist" in resumed.stderr, resumed.stderr
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


@pytest.mark.e2e
def test_default_run_dir_is_claimed_where_hydra_writes(tmp_path):
    logs = tmp_path / "logs"
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"),
                           f"ckpt={tmp_path / 'missing.ckpt'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**ENV, "TSKD_LOG_DIR": str(logs)})
    assert "missing.ckpt does not exist" in proc.stderr, proc.stderr
    (run,) = (logs / "eval" / "runs").iterdir()  # one folder: the lock was taken in Hydra's
    assert (run / ".hydra").is_dir() and not (run / LOCK_FILE).exists()


def test_claim_and_release_in_process(tmp_path):
    run = tmp_path / "run"
    claim(run, "hydra.run.dir")
    lock = json.loads((run / LOCK_FILE).read_text())
    assert lock["pid"] == os.getpid()
    with pytest.raises(ConfigError, match=f"is being written by a live run \\(pid {os.getpid()}"):
        claim(run, "hydra.run.dir")  # this very process: still live
    release(run)
    assert not (run / LOCK_FILE).exists()
    claim(run, "hydra.run.dir")  # an empty folder with no owner: free again
    release(run)
    (run / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match="already holds a run"):
        claim(run, "hydra.run.dir")
    ckpt = run / "checkpoints" / "last.ckpt"
    claim(run, "hydra.run.dir", resume=ckpt)  # train.py resuming that run in its own dir
    release(run)
    with pytest.raises(ConfigError, match="already holds a run"):
        claim(run, "hydra.run.dir", resume=tmp_path / "other" / "last.ckpt")


def test_sweep_dir_with_job_dirs_is_taken(tmp_path):
    sweep = tmp_path / "sweep"
    _finished_run(sweep / "0")
    with pytest.raises(ConfigError, match=f"hydra.sweep.dir={sweep} already holds a run"):
        claim(sweep, "hydra.sweep.dir")
    assert not (sweep / LOCK_FILE).exists()
