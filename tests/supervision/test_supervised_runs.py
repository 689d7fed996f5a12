"""Noisy and weak runs end to end (tiny synthetic runs through train.py, as a user starts them).

What they must show (issue 18): the draw and the split on disk in DART's array style, the
diagnostics in the logs, the loss figure; a DART-format draw read back trains on exactly its
labels; true labels never reach training; a resume reproduces the pseudo-labels; a resume under
another supervision setting is refused naming the key; two DDP ranks hold the same labels.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.entry_runs import TINY, run_entry

pytestmark = pytest.mark.e2e  # each test here starts train.py, eval.py, an app or another process

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
NOISY = ["supervision=noisy", "supervision.label_noise=0.2", "trainer.max_epochs=2"]
# weak: one pre-training epoch, then two main epochs with pseudo-labels (stage I at once)
WEAK = ["supervision=weak", "supervision.label_ratio=0.5", "supervision.pretrain_epochs=1",
        "loss.ce_only_epochs=0", "trainer.max_epochs=2"]
POISON = ["+callbacks.poison._target_=truth_poison.TruthPoison"]


def _train(run: Path, data_dir: Path, *args: str) -> Path:
    env = {"TSKD_DATA_DIR": str(data_dir),
           "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    run_entry("train.py", ["experiment=synthetic", *TINY, "test_after_training=false",
                           f"hydra.run.dir={run}", *args], env=env)
    return run


def _epoch_rows(run: Path, prefix: str) -> list[dict]:
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    return [{k: float(v) for k, v in r.items() if k.startswith(prefix) and v} for r in rows
            if any(k.startswith(prefix) and v for k, v in r.items())]


def _weights(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def _equal(a, b) -> bool:
    """Tensors, and the plain containers a state dict nests them in, equal exactly."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def _same_weights(a: Path, b: Path) -> bool:
    return _equal(_weights(a), _weights(b))


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(folder.glob("*.npy"))}


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory, data_dir) -> Path:
    return _train(tmp_path_factory.mktemp("noisy") / "run", data_dir, *NOISY)


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory, data_dir) -> Path:
    return _train(tmp_path_factory.mktemp("weak") / "run", data_dir, *WEAK)


def test_noisy_run_writes_its_draw_diagnostics_and_figure(noisy_run):
    files = _arrays(noisy_run / "supervision")
    assert sorted(files) == sorted(f"noise_{m}{s}.npy" for m in ("rgb", "ir")
                                   for s in ("", "_noiseIdx", "_cleanIdx", "_true"))
    for m in ("rgb", "ir"):
        noisy, true = files[f"noise_{m}.npy"], files[f"noise_{m}_true.npy"]
        changed = np.flatnonzero(noisy != true)
        assert np.array_equal(changed, np.sort(files[f"noise_{m}_noiseIdx.npy"]))
        assert len(changed) == int(np.ceil(0.2 * len(true)))  # ceil(rho N), never the truth
    log = (noisy_run / "train.log").read_text()
    assert "noisy labels: 0.20" in log
    (epoch1,) = _epoch_rows(noisy_run, "noise/")  # epoch 0 is the CE warm-up: no confidences
    for view in ("view1", "view2", "infrared"):
        assert 0 <= epoch1[f"noise/{view}_auc"] <= 1
        assert epoch1[f"noise/{view}_noisy_share"] == pytest.approx(0.2, abs=0.01)
    png = noisy_run / "loss_histogram.png"
    from PIL import Image
    assert Image.open(png).size[0] > 500


def test_dart_format_draw_is_trained_on_exactly(noisy_run, tmp_path, data_dir):
    # another seed: the file, not the seed, decides the labels
    run = _train(tmp_path / "from_file", data_dir, *NOISY[:-1], "trainer.max_epochs=1",
                 "logger=none", "supervision.noise_seed=7",
                 f"supervision.noise_file={noisy_run / 'supervision' / 'noise'}")
    first, again = _arrays(noisy_run / "supervision"), _arrays(run / "supervision")
    assert first.keys() == again.keys()
    assert all(np.array_equal(first[k], again[k]) for k in first)
    # and the labels the run trained on (its checkpoint's datamodule state) are the file's
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)["ReIDDataModule"]["labels"]
    assert np.array_equal(state["visible"], first["noise_rgb.npy"])
    assert np.array_equal(state["infrared"], first["noise_ir.npy"])


def test_true_labels_never_reach_noisy_training(noisy_run, tmp_path, data_dir):
    poisoned = _train(tmp_path / "poisoned", data_dir, *NOISY, *POISON)
    assert _same_weights(noisy_run, poisoned)
    # the diagnostics do read the truth: with shuffled truth they change
    assert _epoch_rows(noisy_run, "noise/") != _epoch_rows(poisoned, "noise/")


def test_weak_run_writes_split_and_pseudo_labels(weak_run):
    files = _arrays(weak_run / "supervision")
    for m in ("rgb", "ir"):
        lab, unl = files[f"split_{m}_labelledIdx.npy"], files[f"split_{m}_unlabelledIdx.npy"]
        true, pseudo = files[f"split_{m}_true.npy"], files[f"split_{m}_pseudo.npy"]
        assert np.array_equal(np.sort(np.concatenate([lab, unl])), np.arange(len(true)))
        assert len(lab) >= len(np.unique(true))  # at least one per identity
        assert np.array_equal(pseudo[lab], true[lab])  # labelled images keep the truth
        assert pseudo[unl].min() >= 0  # every unlabelled image has a pseudo-label
    rows = _epoch_rows(weak_run, "weak/")
    assert len(rows) == 2  # the two main epochs (pre-training has no confidences)
    assert 0 <= rows[0]["weak/visible_pseudo_accuracy"] <= 1
    assert rows[1]["weak/infrared_changed"] >= 0


def test_weak_run_without_confidences_still_logs_pseudo_label_quality(tmp_path, data_dir):
    """loss=baseline has no GMM confidences: the pseudo-label diagnostics are logged anyway,
    without the ``mean_w`` values (which need w)."""
    run = _train(tmp_path / "run", data_dir, *WEAK, "loss=baseline")
    rows = _epoch_rows(run, "weak/")
    assert len(rows) == 2  # both epochs after the first pseudo-labels
    for row in rows:
        assert 0 <= row["weak/visible_pseudo_accuracy"] <= 1
        assert row["weak/infrared_ids_present"] >= 1
        assert not any("mean_w" in k for k in row)


def test_true_labels_never_reach_weak_training(weak_run, tmp_path, data_dir):
    poisoned = _train(tmp_path / "poisoned", data_dir, *WEAK, *POISON)
    assert _same_weights(weak_run, poisoned)
    a, b = _arrays(weak_run / "supervision"), _arrays(poisoned / "supervision")
    for m in ("rgb", "ir"):
        assert np.array_equal(a[f"split_{m}_pseudo.npy"], b[f"split_{m}_pseudo.npy"])
    assert _epoch_rows(weak_run, "weak/") != _epoch_rows(poisoned, "weak/")


def test_resume_reproduces_pseudo_labels_and_refuses_another_ratio(weak_run, tmp_path,
                                                                    data_dir):
    first = _train(tmp_path / "first", data_dir, *WEAK[:-1], "trainer.max_epochs=1")
    ckpt = first / "checkpoints" / "last.ckpt"
    resumed = _train(tmp_path / "resumed", data_dir, *WEAK, f"ckpt={ckpt}")
    a, b = _arrays(weak_run / "supervision"), _arrays(resumed / "supervision")
    for m in ("rgb", "ir"):
        assert np.array_equal(a[f"split_{m}_pseudo.npy"], b[f"split_{m}_pseudo.npy"])
    assert _same_weights(weak_run, resumed)
    with pytest.raises(AssertionError, match=r"supervision.label_ratio=0.25 but the checkpoint "
                                             r"was trained with supervision.label_ratio=0.5"):
        _train(tmp_path / "other", data_dir, *WEAK, "supervision.label_ratio=0.25",
               f"ckpt={ckpt}")


def test_ddp_ranks_share_the_pseudo_labels(tmp_path, data_dir):
    # each rank checks after every refresh that all ranks hold the same labels (and the draw
    # at fit start); a disagreement stops the run
    run = _train(tmp_path / "ddp", data_dir, *WEAK, "trainer=ddp", "trainer.accelerator=cpu",
                 "trainer.devices=2", "trainer.precision=32-true",
                 "trainer.channels_last=false", "logger=none")
    files = _arrays(run / "supervision")
    assert files["split_rgb_pseudo.npy"].min() >= 0
