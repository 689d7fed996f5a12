"""Signals as a terminal and a scheduler send them: to the whole process group (issue 20, item 2).

Ctrl-C in a terminal sends SIGINT to every process of the foreground group, and schedulers
(Slurm's ``scancel``, a time limit) send SIGTERM to the job's whole group: the DataLoader
workers get the signal too. The run must still end as one stopped by that signal: exit 130 or
143 and ``status.json`` "interrupted", not "failed" because a worker died first.

train.py starts in a new session (its own process group) with two loader workers and full
epochs (of a small SYSU-layout tree, so an epoch takes seconds), and the group is signalled
once its workers are up and the first epoch is saved.
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
from helpers.entry_runs import REPO, TINY
from helpers.synthetic_trees import sysu_tree

pytestmark = pytest.mark.e2e  # each test here starts train.py, eval.py, an app or another process

DEADLINE = 600  # seconds any one wait may take on a loaded machine before the test gives up
# TINY with loader workers and full epochs (no limit_train_batches)
SETTINGS = [a for a in TINY
            if not a.startswith(("data.num_workers=", "trainer.limit_train", "logger="))]


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc: no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_group_signal_with_loader_workers_ends_interrupted(tmp_path, sig, code):
    run, root = tmp_path / "run", sysu_tree(tmp_path / "SYSU")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "dataset=sysu", f"dataset.root={root}",
         *SETTINGS, "data.num_workers=2", "logger=none", "trainer.max_epochs=200",
         f"hydra.run.dir={run}"],
        cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True)  # its own process group, as a shell job or a batch job has
    try:
        end = time.monotonic() + DEADLINE
        ready = False
        while time.monotonic() < end and proc.poll() is None:
            saved = (run / "checkpoints" / "last.ckpt").exists()
            if saved and len(_children(proc.pid)) >= 2:  # the training loader's workers
                ready = True
                break
            time.sleep(0.2)
        if not ready:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no checkpoint with live workers (exit {proc.returncode})\n{err[-6000:]}")
        os.killpg(proc.pid, sig)  # the whole group: train.py and its workers
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    name = signal.Signals(sig).name
    assert proc.returncode == code, err[-8000:]
    assert f"interrupted by {name}; exit status {code}" in err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == name, status
    assert not (run / "metrics.json").exists()


MECHANISM = '''
import os, signal, sys, time
from tskd.core import entry

entry.install_signal_handlers()
what = sys.argv[1]
if what == "child":  # a forked worker: SIGINT ignored (exit 7 after it), SIGTERM kills it
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))
        time.sleep(0.5)
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status))
else:  # a signal while forking stays pending, and the next check raises it
    entry._forking = True
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # the handler has run (and returned) by now
    entry._forking = False
    print("still running")
    try:
        entry.raise_pending_interruption()
    except entry.Interrupted as e:
        print("raised", e.signal_name, e.exit_code)
'''


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", "7"), ("SIGTERM", "-15")])
def test_forked_child_leaves_the_stop_to_the_main_process(sig, code):
    proc = subprocess.run([sys.executable, "-c", MECHANISM, "child", sig], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.stdout.split() == [code], proc.stderr
    assert "Interrupted" not in proc.stderr  # the child raised nothing


def test_signal_during_fork_is_raised_at_the_next_check():
    proc = subprocess.run([sys.executable, "-c", MECHANISM, "fork"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.stdout.splitlines() == ["still running", "raised SIGINT 130"], proc.stderr
