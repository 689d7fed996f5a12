"""Evaluation from the checkpoint alone (tskd.runner.run.evaluate_checkpoint in-process, configs
composed by Hydra).

The checkpoints here are written the way train.py writes them (the module's hyper-parameters,
the whole run config, the ``tskd`` metadata) but untrained, on tiny synthetic trees, so each
test runs in seconds (:mod:`helpers.run_checkpoints`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.hydra_compose import SMALL, compose_config
from helpers.run_checkpoints import evaluate, write_checkpoint
from helpers.synthetic_trees import regdb_tree, sysu_tree

from tskd.core.errors import CheckpointError, ConfigError, DatasetError


def caches(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "tskd_cache").glob("*.npy"))


@pytest.fixture(scope="module")
def sysu_ckpt(tmp_path_factory):
    base = tmp_path_factory.mktemp("sysu_ckpt")
    root = sysu_tree(base / "SYSU")
    keys = ["dataset=sysu", f"dataset.root={root}", *SMALL]
    return write_checkpoint(base / "last.ckpt", keys), root


def test_eval_uses_the_checkpoint_dataset_and_caches_only_the_test_images(sysu_ckpt, tmp_path):
    ckpt, root = sysu_ckpt
    metrics = evaluate(ckpt, tmp_path / "e", "mode=indoor")
    on_disk = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert on_disk == metrics
    assert (metrics["dataset"], metrics["mode"], len(metrics["trials"])) == ("sysu", "indoor", 10)
    assert metrics["checkpoint"] == str(ckpt.resolve())
    assert metrics["img_size"] == [64, 32]  # the checkpoint's, not eval.yaml's or sysu.yaml's
    assert metrics["data_root"] == str(root.resolve())
    assert caches(root) == ["sysu_test_64x32.npy"]  # no training caches


def _files(root: Path, cams, pids) -> list[list[Path]]:
    """The image files of each (id, camera) folder that exists, ids then cameras in order."""
    folders = [root / f"cam{c}" / f"{p:04d}" for p in pids for c in cams]
    return [sorted(f.glob("*.jpg")) for f in folders if f.is_dir()]


def test_metrics_say_what_they_were_measured_on(sysu_ckpt, tmp_path, capsys):
    """Cutting test_id.txt after training changes the recorded lists and the table's header,
    and a sweep summary refuses to average the two results; moved data keeps its hash."""
    from tskd.apps.report import main as report_main
    from tskd.apps.report import summarize_sweep

    ckpt, root = sysu_ckpt
    full = evaluate(ckpt, tmp_path / "full", "mode=all")
    copy = tmp_path / "SYSU-copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("tskd_cache"))
    moved = evaluate(ckpt, tmp_path / "moved", "mode=all", f"dataset.root={copy}")
    assert moved["test_data"] == full["test_data"]  # the same lists, at another place
    id_file = copy / "exp" / "test_id.txt"
    ids = [int(t) for t in id_file.read_text().replace(",", " ").split()]
    id_file.write_text(",".join(map(str, ids[:3])))
    capsys.readouterr()
    cut = evaluate(ckpt, tmp_path / "cut", "mode=all", f"dataset.root={copy}")
    table = capsys.readouterr().out
    # hand count from the files: queries are cam3/cam6, the all-search gallery one image per
    # (id, camera) of cams 1, 2, 4, 5, and the test list both (every gallery candidate)
    queries, candidates = _files(copy, (3, 6), ids[:3]), _files(copy, (1, 2, 4, 5), ids[:3])
    q, g = sum(map(len, queries)), len(candidates)
    data = cut["test_data"]
    assert (data["images"], data["identities"]) == (q + sum(map(len, candidates)), 3)
    assert data["settings"] == {"all": {"queries": q, "query_ids": 3, "gallery": g,
                                        "gallery_ids": 3}}
    assert data["split"] is None and len(data["lists_sha256"]) == 64
    assert data["lists_sha256"] != full["test_data"]["lists_sha256"]
    assert full["test_data"]["identities"] == len(ids) > 3
    lines = table.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("sysu test, 10 trial(s)")))
    assert lines[at + 1] == (f"test lists {data['lists_sha256'][:12]}: {data['images']} "
                             f"images, 3 ids; all: {q} queries (3 ids), gallery {g} (3 ids)")
    sweep = tmp_path / "sweep"
    for job, (seed, doc) in enumerate([(0, full), (1, cut)]):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
        (sweep / str(job) / "metrics.json").write_text(json.dumps(doc))
    with pytest.raises(Exception, match="different test lists") as err:
        summarize_sweep(sweep)
    msg = str(err.value)
    assert "run 0" in msg and "run 1" in msg and "3 ids" in msg and "restore the lists" in msg
    assert report_main([str(sweep)]) == 2
    assert "different test lists" in capsys.readouterr().err


def test_moved_data_needs_and_takes_dataset_root(sysu_ckpt, tmp_path):
    ckpt, root = sysu_ckpt
    moved = shutil.copytree(root, tmp_path / "moved", ignore=shutil.ignore_patterns("tskd_cache"))
    wrong = tmp_path / "not_there"
    with pytest.raises(DatasetError, match="SYSU-MM01 root '.*not_there' does not exist"):
        evaluate(ckpt, tmp_path / "e0", f"dataset.root={wrong}")
    metrics = evaluate(ckpt, tmp_path / "e1", f"dataset.root={moved}")
    assert metrics["data_root"] == str(moved.resolve()) and metrics["img_size"] == [64, 32]
    assert caches(moved) == ["sysu_test_64x32.npy"]


def test_image_size_and_cache_dir_from_the_command_line(sysu_ckpt, tmp_path):
    ckpt, root = sysu_ckpt
    metrics = evaluate(ckpt, tmp_path / "e", "dataset.img_h=96", "dataset.img_w=48",
                       f"dataset.cache_dir={tmp_path / 'c'}")
    assert metrics["img_size"] == [96, 48]
    assert sorted(p.name for p in (tmp_path / "c").glob("*.npy")) == ["sysu_test_96x48.npy"]


def test_explicit_dataset_option_still_works(sysu_ckpt, tmp_path):
    """dataset=sysu names the dataset: its root unless given, the checkpoint's image size."""
    from tskd.checkpoints.eval_data import eval_dataset
    from tskd.checkpoints.loading import load_checkpoint

    ckpt, root = sysu_ckpt
    cfg = compose_config("eval", [f"ckpt={ckpt}", "dataset=sysu", f"dataset.root={root}",
                                  f"paths.output_dir={tmp_path}"])
    d = eval_dataset(cfg, load_checkpoint(ckpt), ["dataset=sysu", f"dataset.root={root}"])
    assert (d.name, d.root, d.img_h, d.img_w) == ("sysu", str(root), 64, 32)


def test_other_dataset_refused_before_any_data_work(sysu_ckpt, tmp_path):
    ckpt, _ = sysu_ckpt
    with pytest.raises(CheckpointError, match="was trained on sysu but dataset=regdb"):
        evaluate(ckpt, tmp_path / "e", "dataset=synthetic_regdb",
                 f"paths.data_dir={tmp_path / 'data'}")
    assert not (tmp_path / "data").exists()  # the synthetic RegDB tree was never generated
    from tskd.checkpoints.eval_data import eval_dataset
    from tskd.checkpoints.loading import load_checkpoint

    keys = ["dataset=regdb", f"dataset.root={tmp_path}", "eval.allow_other_dataset=true"]
    cfg = compose_config("eval", [f"ckpt={ckpt}", *keys, f"paths.output_dir={tmp_path}"])
    assert eval_dataset(cfg, load_checkpoint(ckpt), keys).name == "regdb"  # allowed


def test_backbone_override_refused(sysu_ckpt, tmp_path):
    ckpt, _ = sysu_ckpt
    with pytest.raises(CheckpointError, match="holds a resnet18 but model.backbone=resnet50"):
        evaluate(ckpt, tmp_path / "e", "model.backbone=resnet50")


def test_class_count_refused_before_caching(sysu_ckpt, tmp_path):
    ckpt, _ = sysu_ckpt
    other = sysu_tree(tmp_path / "other", num_train=9)
    with pytest.raises(CheckpointError, match=r"has 8 classes but sysu at .*other has 11 training"):
        evaluate(ckpt, tmp_path / "e", f"dataset.root={other}")
    assert caches(other) == []


def test_not_a_tskd_checkpoint_refused(tmp_path):
    raw = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(50, 60).state_dict(), raw)  # a raw state dict (12 KB)
    with pytest.raises(CheckpointError, match="is not a tskd checkpoint"):
        evaluate(raw, tmp_path / "e")


def test_bad_eval_values_refused_at_start(sysu_ckpt, tmp_path):
    ckpt, _ = sysu_ckpt
    with pytest.raises(ConfigError) as err:
        evaluate(ckpt, tmp_path / "e", "eval.flip=yes", "data.test_batch_size=0")
    assert "eval.flip='yes' must be true or false" in str(err.value)
    assert "data.test_batch_size=0 must be a whole number >= 1" in str(err.value)
    with pytest.raises(ConfigError, match="dataset.img_h=8 must be a whole number >= 16"):
        evaluate(ckpt, tmp_path / "e", "dataset.img_h=8")


@pytest.fixture(scope="module")
def regdb_ckpt(tmp_path_factory):
    base = tmp_path_factory.mktemp("regdb_ckpt")
    root = regdb_tree(base / "RegDB")
    keys = ["dataset=regdb", f"dataset.root={root}", "dataset.trial=3", *SMALL]
    return write_checkpoint(base / "last.ckpt", keys), root


def test_regdb_split_comes_from_the_checkpoint(regdb_ckpt, tmp_path):
    ckpt, root = regdb_ckpt
    metrics = evaluate(ckpt, tmp_path / "e")
    assert metrics["dataset"] == "regdb" and [t["trial"] for t in metrics["trials"]] == [3]
    assert caches(root) == ["regdb_all_64x32.npy"]  # RegDB's one cache holds the test images


def test_other_regdb_split_refused_unless_allowed(regdb_ckpt, tmp_path):
    from tskd.checkpoints.eval_data import eval_dataset
    from tskd.checkpoints.loading import load_checkpoint

    ckpt, _ = regdb_ckpt
    with pytest.raises(CheckpointError, match="trained on RegDB split 3; testing it on split 5"):
        evaluate(ckpt, tmp_path / "e", "dataset.trial=5")
    keys = ["dataset.trial=5", "eval.allow_other_trial=true"]
    cfg = compose_config("eval", [f"ckpt={ckpt}", *keys, f"paths.output_dir={tmp_path}"])
    assert eval_dataset(cfg, load_checkpoint(ckpt), keys).trial == 5
