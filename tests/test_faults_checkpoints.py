"""Checkpoint faults end in one message naming the file and the fix (issue 20, item 10): a full
disk during a save, a checkpoint lacking what the tools read, a tskd checkpoint given as
ImageNet weights, and run or checkpoint folders that cannot be written (found before training)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from helpers.entry_runs import TINY
from hydra import compose, initialize_config_dir

from tskd.checkpoints import saving
from tskd.checkpoints.saving import write_checkpoint
from tskd.core.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]


class FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.fh.write(data)

    def __getattr__(self, name):  # flush, fileno, close, ...
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def test_full_disk_during_a_checkpoint_save(tmp_path, monkeypatch):
    last = tmp_path / "checkpoints" / "last.ckpt"
    write_checkpoint({"epoch": 1, "w": torch.zeros(10)}, last)
    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return FullDisk(fh, room=4096) if "w" in mode else fh

    monkeypatch.setattr(saving, "open", full_disk_open, raising=False)
    with pytest.raises(CheckpointError) as err:
        write_checkpoint({"epoch": 2, "w": torch.zeros(100_000)}, last)
    msg = str(err.value)
    assert f"cannot save checkpoint {last}: No space left on device" in msg
    assert f"{last} is unchanged" in msg and f"ckpt={last}" in msg and "Free space" in msg
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no debris
    assert torch.load(last, weights_only=True)["epoch"] == 1


def _without(ckpt: Path, out: Path, key: str) -> Path:
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    if key == "hyper_parameters":
        del data["hyper_parameters"]
    else:
        del data["tskd"][key]
    torch.save(data, out)
    return out


@pytest.mark.parametrize("key", ["img_size", "hyper_parameters"])
def test_checkpoint_lacking_what_the_tools_read(tiny, tmp_path, capsys, key):
    from tskd.apps.export import main as export_main
    from tskd.checkpoints.eval_data import eval_dataset
    from tskd.checkpoints.loading import load_checkpoint
    from tskd.features.images import Embedder

    bad = _without(tiny[0], tmp_path / "cut.ckpt", key)
    with pytest.raises(CheckpointError) as err:
        Embedder.from_checkpoint(bad)
    msg = str(err.value)
    assert f"checkpoint {bad} lacks {key!r}" in msg and "train.py" in msg
    assert export_main([str(bad), "--out", str(tmp_path / "onnx")]) == 1
    assert f"lacks {key!r}" in capsys.readouterr().err
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt={bad}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(CheckpointError, match=f"lacks {key!r}"):
        eval_dataset(cfg, load_checkpoint(bad), [])


def test_a_tskd_checkpoint_given_as_imagenet_weights_points_to_ckpt(tiny):
    from tskd.models.components.pretrained import require_weights

    ckpt = tiny[0]
    with pytest.raises(CheckpointError) as err:
        require_weights(str(ckpt), "resnet18")
    msg = str(err.value)
    assert f"{ckpt} is a tskd checkpoint" in msg and f"ckpt={ckpt}" in msg
    assert "model.pretrained" in msg


@pytest.mark.parametrize("key", ["paths.output_dir", "callbacks.model_checkpoint.dirpath"])
def test_unwritable_run_or_checkpoint_dir_is_found_before_training(tmp_path, key):
    from tskd.runner.run import train

    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")  # a file where a folder is needed: fails even as root
    overrides = ["experiment=synthetic", *TINY, f"paths.data_dir={tmp_path / 'data'}",
                 f"paths.output_dir={tmp_path / 'run'}", f"{key}={blocker / 'sub'}"]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    msg = str(err.value)
    assert key in msg and f"{blocker / 'sub'} cannot be written" in msg
    assert "nothing was started" in msg
    assert not (tmp_path / "data").exists()  # refused before any data was made
