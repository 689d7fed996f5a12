"""A checkpoint of another format is refused on load, naming both versions and the fix."""

from __future__ import annotations

import pytest
import torch

from tskd.checkpoints.loading import load_checkpoint
from tskd.core.errors import CheckpointError
from tskd.models.tskd_module import CHECKPOINT_FORMAT


def _save(path, meta: dict):
    torch.save({"tskd": meta, "state_dict": {"w": torch.zeros(2)}}, path)
    return path


def test_the_current_format_loads(tmp_path):
    path = _save(tmp_path / "ok.ckpt", {"format": CHECKPOINT_FORMAT, "dataset": "sysu"})
    assert load_checkpoint(path)["tskd"]["format"] == CHECKPOINT_FORMAT


@pytest.mark.parametrize("meta", [{"format": CHECKPOINT_FORMAT - 1}, {"dataset": "sysu"}])
def test_another_format_is_refused(tmp_path, meta):
    path = _save(tmp_path / "old.ckpt", meta)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert f"has format {meta.get('format')!r}" in msg
    assert f"reads format {CHECKPOINT_FORMAT}" in msg and "retrain" in msg and str(path) in msg
