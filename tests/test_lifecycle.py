"""What happens when a run is stopped, killed mid-save, or started alongside another one
(docs/operations.md).

* SIGTERM to train.py (or to a sweep) stops it with exit status 143, ``status.json`` says
  "interrupted", and a sweep's summary lists the jobs it never started as "not run".
* A save killed half-way (an error, a signal, SIGKILL) leaves ``last.ckpt`` whole, and the
  previous epoch's copy is kept as ``last.prev.ckpt``.
* Two runs whose clocks read the same second get two run dirs.

Waits on other processes poll for a file with a deadline; nothing depends on how fast they run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.entry_runs import REPO, TINY

from tskd.checkpoints.loading import load_checkpoint
from tskd.checkpoints.saving import AtomicCheckpointIO, write_checkpoint
from tskd.core.errors import CheckpointError
from tskd.core.files import previous_path

DEADLINE = 600  # seconds any one wait may take on a loaded machine before the test gives up


def _fake_ckpt(epoch: int) -> dict:
    """The smallest dict tskd.checkpoints.loading.load_checkpoint accepts, tagged with its epoch."""
    return {"tskd": {"format": 2, "dataset": "sysu"}, "epoch": epoch,
            "state_dict": {"w": torch.full((20000,), float(epoch))}}


def _wait_for(what, proc: subprocess.Popen, describe: str):
    """Poll ``what()`` until truthy; fail with the process's output if it exits first."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        found = what()
        if found:
            return found
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process exited {proc.returncode} before {describe}\n{out[-4000:]}\n"
                        f"{err[-8000:]}")
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"gave up waiting {DEADLINE}s for {describe}")


def _start(args: list[str], env: dict, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen, sig: int) -> tuple[str, str]:
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running {DEADLINE}s after the signal\n{err[-8000:]}")


# --- checkpoint writes ---------------------------------------------------------------------


def test_failed_save_leaves_last_checkpoint_and_previous_copy(tmp_path, monkeypatch):
    last = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_fake_ckpt(0), last)
    assert not previous_path(last).exists()  # nothing was replaced yet
    io.save_checkpoint(_fake_ckpt(1), last)
    assert previous_path(last) == tmp_path / "checkpoints" / "last.prev.ckpt"
    assert load_checkpoint(previous_path(last))["epoch"] == 0

    real_save = torch.save

    def dies_half_way(obj, fh):  # a full disk or a signal in the middle of the write
        fh.write(b"\x80\x02half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint(_fake_ckpt(2), last)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(last)["epoch"] == 1  # untouched
    assert load_checkpoint(previous_path(last))["epoch"] == 0
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "last.prev.ckpt"]


SLOW_SAVER = '''
import io
import sys
import time
from pathlib import Path

import torch

from tskd.checkpoints.saving import write_checkpoint

path, marker = Path(sys.argv[1]), Path(sys.argv[2])
make = lambda e: {"tskd": {"format": 2}, "epoch": e,
                  "state_dict": {"w": torch.full((200000,), float(e))}}
write_checkpoint(make(0), path)
write_checkpoint(make(1), path)
real_save = torch.save


def slow_save(obj, fh):
    buf = io.BytesIO()
    real_save(obj, buf)
    data = buf.getvalue()
    fh.write(data[: len(data) // 2])
    fh.flush()
    marker.touch()  # half of epoch 2 is on disk: the parent kills us now
    time.sleep(600)
    fh.write(data[len(data) // 2:])


torch.save = slow_save
write_checkpoint(make(2), path)
'''


@pytest.mark.e2e
def test_sigkill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    last, marker = tmp_path / "last.ckpt", tmp_path / "half_written"
    (tmp_path / "saver.py").write_text(SLOW_SAVER)
    proc = _start([str(tmp_path / "saver.py"), str(last), str(marker)], {})
    _wait_for(marker.exists, proc, "the save was half-way")
    proc.kill()  # SIGKILL: no handler, no clean-up
    proc.communicate(timeout=60)
    partial = tmp_path / "last.ckpt.partial"
    assert partial.stat().st_size > 0  # the killed write really was in progress, beside it
    assert load_checkpoint(last)["epoch"] == 1
    assert load_checkpoint(previous_path(last))["epoch"] == 0
    # the next save starts over and leaves no debris
    write_checkpoint(_fake_ckpt(3), last)
    assert not partial.exists() and load_checkpoint(last)["epoch"] == 3
    assert load_checkpoint(previous_path(last))["epoch"] == 1


def test_unreadable_last_checkpoint_names_the_previous_copy(tmp_path):
    last = tmp_path / "last.ckpt"
    write_checkpoint(_fake_ckpt(4), last)
    write_checkpoint(_fake_ckpt(5), last)
    last.write_bytes(last.read_bytes()[:1000])  # damaged by something other than tskd
    prev = tmp_path / "last.prev.ckpt"
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as err:
        load_checkpoint(last)
    assert f"pass ckpt={prev}" in str(err.value)
    last.unlink()
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_checkpoint(last)
    assert f"pass ckpt={prev}" in str(err.value)
    assert load_checkpoint(prev)["epoch"] == 4
    # no previous copy: no such hint
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "other" / "last.ckpt")
    assert ".prev.ckpt" not in str(err.value)


# --- signals ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_sigterm_stops_training_with_143_and_keeps_both_checkpoints(tmp_path, data_dir):
    run = tmp_path / "run"
    proc = _start([str(REPO / "train.py"), "experiment=synthetic", *TINY, "logger=none",
                   "trainer.max_epochs=200", f"hydra.run.dir={run}"],
                  {"TSKD_DATA_DIR": str(data_dir)})
    prev = run / "checkpoints" / "last.prev.ckpt"
    _wait_for(prev.exists, proc, "the second epoch's checkpoint")
    out, err = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 143, err[-8000:]
    assert "interrupted by SIGTERM; exit status 143" in err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    assert not (run / "metrics.json").exists()  # the test protocol never ran
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["epoch"] >= 1 and load_checkpoint(prev)["epoch"] == last["epoch"] - 1
    assert not list(run.rglob("*.partial"))


@pytest.mark.e2e
def test_sigterm_stops_a_sweep_and_the_summary_lists_jobs_not_run(tmp_path, data_dir):
    logs = tmp_path / "logs"
    proc = _start([str(REPO / "train.py"), "-m", "dataset=synthetic_regdb",
                   f"dataset.root={data_dir}/synthetic_regdb", "dataset.trial=1,2,3", *TINY,
                   "logger=none", "trainer.max_epochs=200"],
                  {"TSKD_DATA_DIR": str(data_dir), "TSKD_LOG_DIR": str(logs)}, cwd=tmp_path)
    multiruns = logs / "train" / "multiruns"
    first = _wait_for(lambda: list(multiruns.glob("*/0/checkpoints/last.ckpt")), proc,
                      "the first job's first checkpoint")
    out, err = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 143, err[-8000:]
    sweep = first[0].parents[2]
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "interrupted"
    assert not (sweep / "1").exists() and not (sweep / "2").exists()
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["counts"] == {"ok": 0, "failed": 0, "incomplete": 0, "interrupted": 1,
                                 "not_run": 2, "total": 3}
    (setting,) = summary["settings"]
    assert setting["interrupted"] == [{"dir": "0", "trial": 1, "error": "interrupted by SIGTERM"}]
    assert setting["not_run"] == [{"job": 1, "trial": 2}, {"job": 2, "trial": 3}]
    text = (sweep / "summary.txt").read_text()
    assert "NOT RUN: job 1 (trial 2" in text and "NOT RUN: job 2 (trial 3" in text


# --- concurrent runs ----------------------------------------------------------------------


SAME_SECOND = '''
import datetime
import runpy
import sys

import hydra.core.utils

FROZEN = datetime.datetime(2030, 1, 2, 3, 4, 5)


class FrozenClock(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return FROZEN


hydra.core.utils.datetime = FrozenClock  # what ${now:...} reads: both runs see 03:04:05
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


@pytest.mark.e2e
def test_two_runs_started_in_the_same_second_get_their_own_dirs(tmp_path, data_dir):
    # Both processes read the same clock second (frozen), run at the same time, and must still
    # write into separate run dirs, each holding its own config.
    (tmp_path / "same_second.py").write_text(SAME_SECOND)
    logs = tmp_path / "logs"
    env = {"TSKD_DATA_DIR": str(data_dir), "TSKD_LOG_DIR": str(logs)}
    procs = [_start([str(tmp_path / "same_second.py"), str(REPO / "train.py"),
                     "experiment=synthetic", *TINY, "logger=none", "trainer.max_epochs=1",
                     "trainer.limit_train_batches=1", "test_after_training=false",
                     f"seed={seed}"], env) for seed in (1, 2)]
    for proc in procs:
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err[-8000:]
    runs = sorted((logs / "synthetic" / "runs").iterdir())  # experiment=synthetic: task_name
    assert len(runs) == 2, runs
    assert all(r.name.startswith("2030-01-02_03-04-05_") for r in runs)
    seeds = set()
    for run in runs:
        config = (run / ".hydra" / "config.yaml").read_text()
        (seed,) = [ln.split(":")[1].strip() for ln in config.splitlines()
                   if ln.startswith("seed:")]
        ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
        assert str(ckpt["hyper_parameters"]["config"]["seed"]) == seed
        assert ckpt["hyper_parameters"]["config"]["paths"]["output_dir"] == str(run)
        seeds.add(seed)
    assert seeds == {"1", "2"}
