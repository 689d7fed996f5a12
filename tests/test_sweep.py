"""The README's sweep command, typed as a user types it, ends with a correct summary.json.

No ``hydra.sweep.dir=`` is passed: the sweep dir comes from configs/hydra/default.yaml, which
is what broke (``${hydra:runtime.cwd}`` resolved before Hydra sets it). Only the tiny settings
that make it fast and ``dataset=synthetic_regdb`` (generated, in the RegDB layout) differ from
``python train.py -m dataset=regdb dataset.root=... dataset.trial=1,2``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.entry_runs import REPO, TINY, run_entry

pytestmark = pytest.mark.e2e  # each test here starts train.py, eval.py, an app or another process

FAST = [a for a in TINY if not a.startswith("logger=")]
STAMP = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+-[0-9a-f]{4}")  # <time>_<pid>-<random>


def _sweep(data_dir, cwd, env, *extra):
    return run_entry(str(REPO / "train.py"),
                     ["-m", "dataset=synthetic_regdb", f"dataset.root={data_dir}/synthetic_regdb",
                      "dataset.trial=1,2", *FAST, "trainer.max_epochs=1", *extra],
                     cwd=cwd, env={"TSKD_DATA_DIR": str(data_dir), **env})


def _only_sweep_dir(multiruns):
    (sweep,) = multiruns.iterdir()
    assert STAMP.fullmatch(sweep.name), sweep.name
    return sweep


def test_two_split_multirun_writes_correct_summary(tmp_path, data_dir):
    logs = tmp_path / "logs_elsewhere"
    _sweep(data_dir, tmp_path, {"TSKD_LOG_DIR": str(logs)}, "logger=tensorboard")
    sweep = _only_sweep_dir(logs / "train" / "multiruns")
    runs = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in (0, 1)]
    assert [r["trials"][0]["trial"] for r in runs] == [1, 2]
    assert list((sweep / "0" / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["counts"]["ok"] == 2 and summary["counts"]["failed"] == 0
    assert summary["counts"]["not_run"] == 0 and summary["counts"]["total"] == 2
    (setting,) = summary["settings"]
    by_key = {(r["direction"], r["feature"]): r for r in setting["results"]}
    assert set(by_key) == {(d, f) for d in ("visible2thermal", "thermal2visible")
                           for f in ("fc", "pool")}
    for (direction, feature), res in by_key.items():
        per_run = [next(x for x in r["results"]
                        if x["direction"] == direction and x["feature"] == feature)
                   for r in runs]
        for key in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP"):
            values = [x["mean"][key] for x in per_run]
            assert res["mean"][key] == pytest.approx(np.mean(values))
            assert res["std"][key] == pytest.approx(np.std(values))
    assert "visible2thermal" in (sweep / "summary.txt").read_text()


def test_sweep_without_log_dir_variable_lands_in_cwd_logs(tmp_path, data_dir, monkeypatch):
    # Without TSKD_LOG_DIR the default is <folder the command ran from>/logs.
    monkeypatch.delenv("TSKD_LOG_DIR", raising=False)
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    assert "TSKD_LOG_DIR" not in os.environ
    _sweep(data_dir, cwd, {}, "logger=none")
    sweep = _only_sweep_dir(cwd / "logs" / "train" / "multiruns")
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").is_file()
        # the resolved config the checkpoint records: absolute paths from where it ran
        ckpt = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)
        paths = ckpt["hyper_parameters"]["config"]["paths"]
        assert paths["log_dir"] == f"{cwd}/logs" and paths["data_dir"] == str(data_dir)
        assert paths["output_dir"] == str(sweep / job)
    assert json.loads((sweep / "summary.json").read_text())["counts"]["ok"] == 2


@pytest.fixture(scope="module")
def untested_sweep(tmp_path_factory, data_dir):
    """A finished two-job sweep with test_after_training=false, in a given hydra.sweep.dir."""
    base = tmp_path_factory.mktemp("untested")
    sweep = base / "sweep"
    _sweep(data_dir, base, {"TSKD_LOG_DIR": str(base / "logs")}, "logger=none",
           "test_after_training=false", f"hydra.sweep.dir={sweep}")
    return sweep


def test_sweep_without_test_is_reported_complete(untested_sweep):
    # Every job did all it was asked (train, no test): "ok", listed as trained but not tested.
    sweep = untested_sweep
    for job in ("0", "1"):
        assert json.loads((sweep / job / "status.json").read_text())["status"] == "completed"
        assert not (sweep / job / "metrics.json").exists()
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["counts"] == {"ok": 2, "failed": 0, "incomplete": 0, "interrupted": 0,
                                 "not_run": 0, "total": 2}
    (setting,) = summary["settings"]
    assert setting["results"] == [] and setting["incomplete"] == []
    assert setting["not_tested"] == [{"dir": "0", "trial": 1}, {"dir": "1", "trial": 2}]
    text = (sweep / "summary.txt").read_text()
    assert "runs: 2 ok, 0 failed, 0 incomplete, 0 interrupted, 0 not run" in text
    assert "NOT TESTED: run 0 (trial 1" in text and "NOT TESTED: run 1 (trial 2" in text
    assert "python eval.py ckpt=<sweep dir>/1/checkpoints/last.ckpt" in text
    assert "INCOMPLETE" not in text


def test_second_sweep_into_the_same_dir_is_refused(untested_sweep, data_dir, tmp_path):
    # Issue 20: two sweeps given one hydra.sweep.dir used to share the job folders, both exit 0.
    sweep = untested_sweep
    before = {p: p.read_bytes() for p in sorted(sweep.rglob("*")) if p.is_file()}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "dataset=synthetic_regdb",
         f"dataset.root={data_dir}/synthetic_regdb", "dataset.trial=1,2", *FAST,
         "trainer.max_epochs=1", "logger=none", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TSKD_DATA_DIR": str(data_dir)})
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert f"hydra.sweep.dir={sweep} already holds a run" in proc.stderr
    assert "Pass another hydra.sweep.dir=<new folder>" in proc.stderr
    after = {p: p.read_bytes() for p in sorted(sweep.rglob("*")) if p.is_file()}
    assert after == before  # the first sweep's files, summary included, untouched
