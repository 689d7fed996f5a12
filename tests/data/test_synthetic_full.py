"""The full-scale synthetic SYSU-MM01 option, and the small default left byte-identical."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tskd.core.errors import DatasetError
from tskd.data import synthetic, sysu

REPO = Path(__file__).resolve().parents[2]


def _digest(root: Path) -> dict[str, str]:
    """Content hash of every generated file (the lock file excluded: it names a pid)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != synthetic.LOCK}


def _committed_generator(tmp_path: Path):
    """tskd/data/synthetic.py as committed before the full-scale option (git history)."""
    # the newest committed version without make_sysu_full is the reference
    revs = subprocess.run(["git", "log", "--format=%H", "--", "tskd/data/synthetic.py"],
                          cwd=REPO, capture_output=True, text=True).stdout.split()
    for rev in revs:
        text = subprocess.run(["git", "show", f"{rev}:tskd/data/synthetic.py"], cwd=REPO,
                              capture_output=True, text=True).stdout
        if "make_sysu_full" not in text:
            break
    else:
        pytest.skip("no committed version without the full-scale option to compare with")
    # the ground-floor modules it imports have moved to tskd.core since (issue 19)
    for name in ("errors", "files"):
        text = text.replace(f"from tskd.{name} import", f"from tskd.core.{name} import")
    file = tmp_path / "synthetic_before.py"
    file.write_text(text)
    spec = importlib.util.spec_from_file_location("synthetic_before", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.e2e
def test_small_default_is_byte_identical_to_before(tmp_path):
    old = _committed_generator(tmp_path)
    old.ensure_synthetic(tmp_path / "old", "sysu", seed=0)
    synthetic.ensure_synthetic(tmp_path / "new", "sysu", seed=0)
    assert _digest(tmp_path / "old") == _digest(tmp_path / "new")  # images and marker


def test_apportion_hits_the_total_with_at_least_one_each():
    rng = np.random.default_rng(0)
    for total, n in ((22258, 1100), (7, 7), (100, 3)):
        out = synthetic._apportion(total, rng.uniform(0.5, 1.5, n))
        assert out.sum() == total and out.min() >= 1 and len(out) == n
    with pytest.raises(DatasetError, match="cannot give 5"):
        synthetic._apportion(4, np.ones(5))


@pytest.fixture
def small_full(monkeypatch):
    """The full-scale generator at reduced counts (the real ones take ~1.5 min to write)."""
    counts = {"num_train": 10, "num_val": 4, "num_test": 9, "train_visible": 120,
              "train_infrared": 70, "test_visible": 60, "test_infrared": 45}
    monkeypatch.setattr(synthetic, "SYSU_FULL", counts)
    return counts


def test_full_scale_layout_and_exact_counts(tmp_path, small_full):
    root = synthetic.ensure_synthetic(tmp_path / "full", "sysu", seed=3, scale="full")
    marker = json.loads((root / synthetic.MARKER).read_text())
    assert marker["scale"] == "full" and marker["complete"] and marker["size"] == [64, 32]
    vis, ir = sysu.train_set(root)
    assert len(vis) == small_full["train_visible"] and len(ir) == small_full["train_infrared"]
    assert max(r[1] for r in vis) + 1 == small_full["num_train"] + small_full["num_val"]
    assert len(sysu.query_set(root)) == small_full["test_infrared"]
    val = [int(x) for x in (root / "exp" / "val_id.txt").read_text().strip().split(",")]
    for pid in val:  # validation ids are never seen by the indoor visible cameras
        assert not (root / "cam1" / f"{pid:04d}").exists()
        assert not (root / "cam2" / f"{pid:04d}").exists()
    test = [int(x) for x in (root / "exp" / "test_id.txt").read_text().strip().split(",")]
    n_test_vis = sum(len(list((root / f"cam{c}" / f"{pid:04d}").glob("*.jpg")))
                     for pid in test for c in sysu.VISIBLE_CAMS
                     if (root / f"cam{c}" / f"{pid:04d}").is_dir())
    assert n_test_vis == small_full["test_visible"]
    # generated once: a second call finds the marker and leaves the files alone
    before = _digest(root)
    assert synthetic.ensure_synthetic(root, "sysu", seed=3, scale="full") == root
    assert _digest(root) == before


def test_full_scale_is_deterministic_and_differs_from_small(tmp_path, small_full):
    a = synthetic.ensure_synthetic(tmp_path / "a", "sysu", seed=1, scale="full")
    b = synthetic.ensure_synthetic(tmp_path / "b", "sysu", seed=1, scale="full")
    assert _digest(a) == _digest(b)
    # switching the folder to the small scale regenerates it (the marker differs)
    synthetic.ensure_synthetic(a, "sysu", seed=1)
    assert "scale" not in json.loads((a / synthetic.MARKER).read_text())


def test_full_scale_only_for_sysu(tmp_path):
    with pytest.raises(DatasetError, match="'full' with the sysu layout"):
        synthetic.ensure_synthetic(tmp_path / "r", "regdb", scale="full")
    with pytest.raises(DatasetError, match="scale='huge'"):
        synthetic.ensure_synthetic(tmp_path / "s", "sysu", scale="huge")
