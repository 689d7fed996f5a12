"""What a checkpoint says is data, what it keeps is finite, what was tested is named (issue 20).

* Item 3: strings a checkpoint records (``dataset.root='${oc.env:HOME}'``) are literals when
  eval reads them, never OmegaConf interpolations, and eval never generates data at a root
  that came from a checkpoint.
* Item 4: a step that makes the weights non-finite (with a finite loss) is never saved over
  the previous checkpoint; the error names the good files.
* Item 5: after a resume that trains no epoch, ``metrics.json`` names the file that was
  tested, not the original run's ``last.ckpt``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.entry_runs import REPO, TINY
from helpers.hydra_compose import SMALL, compose_config
from helpers.run_checkpoints import evaluate, write_checkpoint
from helpers.synthetic_trees import sysu_tree

from tskd.checkpoints.loading import load_checkpoint
from tskd.checkpoints.saving import AtomicCheckpointIO
from tskd.core.errors import CheckpointError, DatasetError
from tskd.core.files import previous_path

HELPERS = Path(__file__).resolve().parent / "helpers"


def _record(src: Path, dst: Path, **dataset) -> Path:
    """A copy of checkpoint ``src`` whose recorded dataset values are ``dataset``."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["dataset"].update(dataset)
    ckpt["hyper_parameters"]["dataset"].update(
        {k: v for k, v in dataset.items() if k in ckpt["hyper_parameters"]["dataset"]})
    torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory):
    """(checkpoint, its SYSU-layout data) of an untrained model, as train.py writes them."""
    base = tmp_path_factory.mktemp("trust")
    root = sysu_tree(base / "SYSU")
    return write_checkpoint(base / "last.ckpt", ["dataset=sysu", f"dataset.root={root}",
                                                 *SMALL]), root


# --- item 3: a checkpoint is data ---------------------------------------------------------


def test_recorded_root_is_a_literal_path(plain_ckpt, tmp_path, monkeypatch):
    # The data really lives in a folder whose name looks like an interpolation.
    ckpt, root = plain_ckpt
    literal = tmp_path / "data${oc.env:TSKD_TEST_ELSEWHERE}"
    shutil.copytree(root, literal)
    monkeypatch.setenv("TSKD_TEST_ELSEWHERE", "_somewhere_else")
    recorded = _record(ckpt, tmp_path / "literal.ckpt", root=str(literal))
    metrics = evaluate(recorded, tmp_path / "e")
    assert metrics["data_root"] == str(literal.resolve())
    assert (literal / "tskd_cache").is_dir()  # read and cached there, nowhere else
    assert not (tmp_path / "data_somewhere_else").exists()


def test_checkpoint_root_never_expands_nor_receives_generated_data(plain_ckpt, tmp_path,
                                                                    monkeypatch):
    ckpt, _ = plain_ckpt
    target, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a relative literal root would land here
    monkeypatch.setenv("TSKD_TEST_HOME", str(target))
    hostile = _record(ckpt, tmp_path / "hostile.ckpt", root="${oc.env:TSKD_TEST_HOME}",
                      synthetic={"layout": "sysu", "seed": 0})
    with pytest.raises(DatasetError) as err:
        evaluate(hostile, tmp_path / "e")
    msg = str(err.value)
    assert "dataset.root='${oc.env:TSKD_TEST_HOME}'" in msg and str(hostile) in msg
    assert "pass dataset.root=<the data's folder>" in msg
    assert not target.exists() and list(cwd.iterdir()) == []  # nothing generated anywhere


# --- item 4: non-finite weights are never kept ---------------------------------------------


def _state(epoch: int, bad: float | None = None) -> dict:
    w = torch.full((1000,), float(epoch))
    if bad is not None:
        w[7] = bad
    return {"tskd": {"format": 2, "dataset": "sysu"}, "epoch": epoch,
            "state_dict": {"net.w": w, "bank": {"sums": torch.zeros(3)},
                           "steps": torch.tensor(epoch)}}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_state_never_replaces_the_checkpoint(tmp_path, bad):
    last = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_state(0), last)
    io.save_checkpoint(_state(1), last)
    with pytest.raises(CheckpointError) as err:
        io.save_checkpoint(_state(2, bad), last)
    msg = str(err.value)
    assert f"not saved to {last}" in msg and "net.w (1 of 1000 values" in msg
    assert f"{last} (the previous save) and {previous_path(last)} are kept" in msg
    assert f"ckpt={last}" in msg
    assert load_checkpoint(last)["epoch"] == 1
    assert load_checkpoint(previous_path(last))["epoch"] == 0
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "last.prev.ckpt"]


def test_non_finite_first_state_writes_nothing(tmp_path):
    last = tmp_path / "last.ckpt"
    with pytest.raises(CheckpointError, match="No earlier checkpoint of this run exists"):
        AtomicCheckpointIO().save_checkpoint(_state(0, float("nan")), last)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_training_step_that_poisons_the_weights_keeps_the_good_checkpoint(tmp_path):
    # The last step of epoch 1 turns the weights into NaN after a finite loss (a callback does
    # it, tests/helpers/nan_poison.py); the epoch-end save must refuse and name the good file.
    root, run = sysu_tree(tmp_path / "SYSU"), tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "dataset=sysu", f"dataset.root={root}",
         *TINY, "logger=none", "trainer.max_epochs=3", f"hydra.run.dir={run}",
         "+callbacks.poison._target_=nan_poison.NaNPoison", "+callbacks.poison.epoch=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-6000:]
    last = run / "checkpoints" / "last.ckpt"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "CheckpointError" in status["error"]
    assert f"ckpt={last}" in status["error"] and "NaN" in status["error"]
    kept = load_checkpoint(last)
    assert kept["epoch"] == 0  # the warm-up epoch's save, untouched
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values()
               if isinstance(v, torch.Tensor) and v.is_floating_point())


# --- item 5: metrics.json names the file tested ------------------------------------------


def test_resume_that_trains_nothing_names_the_file_tested(tmp_path):
    from tskd.runner.run import train

    root = sysu_tree(tmp_path / "SYSU")
    keys = ["dataset=sysu", f"dataset.root={root}", "trainer=cpu", *SMALL, "data.num_ids=4",
            "data.num_pos=2", "trainer.limit_train_batches=2", "logger=none",
            "trainer.enable_progress_bar=false"]

    def run(out: Path, *extra: str) -> dict:
        return train(compose_config("train", [*keys, f"paths.output_dir={out}", *extra]))

    run(tmp_path / "a", "trainer.max_epochs=1", "test_after_training=false")
    copy = tmp_path / "elsewhere" / "copy.ckpt"
    copy.parent.mkdir()
    shutil.copyfile(tmp_path / "a" / "checkpoints" / "last.ckpt", copy)
    # max_epochs reached already: no epoch is trained, the copy's weights are tested
    tested = run(tmp_path / "b", "trainer.max_epochs=1", f"ckpt={copy}")
    assert tested["checkpoint"] == str(copy.resolve())
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["checkpoint"] == str(
        copy.resolve())
    # one more epoch: the run's own new checkpoint is what was tested
    more = run(tmp_path / "c", "trainer.max_epochs=2", f"ckpt={copy}")
    assert more["checkpoint"] == str((tmp_path / "c" / "checkpoints" / "last.ckpt").resolve())
