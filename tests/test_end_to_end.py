"""train.py and eval.py end to end on synthetic data, on CPU: single process, DDP, resume."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.entry_runs import TINY, run_entry

pytestmark = pytest.mark.e2e  # each test here starts train.py, eval.py, an app or another process

METRIC_KEYS = {"trial", "rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}


def _train(run_dir, data_dir, *extra):
    return run_entry("train.py", ["experiment=synthetic", *TINY, f"paths.data_dir={data_dir}",
                                  f"hydra.run.dir={run_dir}", *extra])


def _check_schema(metrics: dict, dataset: str, n_trials: int) -> None:
    assert {"dataset", "mode", "direction", "feature", "trials", "mean", "std"} <= set(metrics)
    assert metrics["dataset"] == dataset and metrics["feature"] == "fc"
    assert len(metrics["trials"]) == n_trials
    for t in metrics["trials"]:
        assert set(t) == METRIC_KEYS
        assert 0.0 <= t["mAP"] <= 100.0 and t["rank1"] <= t["rank5"] <= t["rank20"] <= 100.0
    assert set(metrics["mean"]) >= METRIC_KEYS - {"trial"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("train_run")
    proc = _train(run, data_dir, "trainer.max_epochs=3")
    return run, proc


def test_train_writes_checkpoint_and_metrics(trained):
    run, proc = trained
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    _check_schema(metrics, "sysu", 10)
    assert metrics["mode"] == "all"
    features = {(r["mode"], r["feature"]) for r in metrics["results"]}
    assert features == {("all", "fc"), ("all", "pool")}
    assert "rank1" in proc.stdout or "R1" in proc.stdout  # the printed table
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "run_info.json").is_file()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["tskd"]["dataset"] == "sysu" and ckpt["tskd"]["backbone"] == "resnet18"
    assert ckpt["tskd"]["img_size"] == [64, 32]
    assert ckpt["epoch"] == 2  # written at the end of the last (0-based) epoch
    # the csv logger recorded every loss term of the staged schedule (stage II from epoch 2)
    logged = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for term in ("train/ce_epoch", "train/tri_epoch", "train/sm_epoch", "train/md_epoch"):
        assert term in logged


def test_eval_on_checkpoint(trained, tmp_path, data_dir):
    run, _ = trained
    out = tmp_path / "eval"
    proc = run_entry("eval.py", [f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "dataset=synthetic",
                                 "mode=indoor", f"paths.data_dir={data_dir}",
                                 "data.num_workers=0", f"hydra.run.dir={out}"])
    metrics = json.loads((out / "metrics.json").read_text())
    _check_schema(metrics, "sysu", 10)
    assert metrics["mode"] == "indoor"
    assert "indoor" in proc.stdout


def test_eval_refuses_mismatched_backbone(trained, tmp_path, data_dir):
    run, _ = trained
    with pytest.raises(AssertionError, match="holds a resnet18 but model.backbone=resnet50"):
        run_entry("eval.py", [f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "dataset=synthetic",
                              "model.backbone=resnet50", f"paths.data_dir={data_dir}",
                              f"hydra.run.dir={tmp_path / 'e'}"])
    status = json.loads((tmp_path / "e" / "status.json").read_text())
    assert status["status"] == "failed" and "resnet18" in status["error"]


def test_eval_refuses_missing_checkpoint(tmp_path, data_dir):
    with pytest.raises(AssertionError, match="does not exist"):
        run_entry("eval.py", [f"ckpt={tmp_path / 'nope.ckpt'}", "dataset=synthetic",
                              f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'e'}"])


def test_resume_matches_uninterrupted_run(tmp_path, data_dir):
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["trainer.max_epochs=3", "test_after_training=false", "logger=none"]
    _train(full, data_dir, *common)
    _train(part, data_dir, *common[1:], "trainer.max_epochs=2")
    _train(part, data_dir, *common, f"ckpt={part / 'checkpoints' / 'last.ckpt'}")
    a = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(part / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        if isinstance(value, dict):  # the prototype bank's running sums (extra state)
            assert value.keys() == b["state_dict"][key].keys(), key
            assert all(torch.equal(v, b["state_dict"][key][k]) for k, v in value.items()), key
        else:
            assert torch.equal(value, b["state_dict"][key]), key
    # prototypes and confidences are part of the state: they exist and were carried over
    assert bool(a["state_dict"]["bank.valid"].any())
    assert not torch.equal(a["state_dict"]["conf_view1"], a["state_dict"]["conf_view2"])


def test_ddp_two_cpu_processes(tmp_path, data_dir):
    run = tmp_path / "ddp"
    _train(run, data_dir, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.precision=32-true", "trainer.channels_last=false", "trainer.max_epochs=3")
    metrics = json.loads((run / "metrics.json").read_text())
    _check_schema(metrics, "sysu", 10)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert bool(ckpt["state_dict"]["bank.valid"].any())


def test_regdb_layout_both_directions(tmp_path, data_dir):
    run = tmp_path / "regdb"
    run_entry("train.py", ["dataset=synthetic_regdb", "dataset.trial=2", *TINY,
                           "trainer.max_epochs=2", f"paths.data_dir={data_dir}",
                           f"hydra.run.dir={run}"])
    metrics = json.loads((run / "metrics.json").read_text())
    _check_schema(metrics, "regdb", 1)
    assert metrics["direction"] == "visible2thermal" and metrics["trials"][0]["trial"] == 2
    directions = {r["direction"] for r in metrics["results"]}
    assert directions == {"visible2thermal", "thermal2visible"}


def test_unseen_sysu_tree_from_outside(tmp_path, repo):
    """The documented keys, run from another folder, on a SYSU-layout tree tskd did not make.

    Evaluation needs nothing but the checkpoint: ``python eval.py mode=indoor ckpt=...`` finds
    the dataset, root and image size in it, and after the tree is moved ``dataset.root=...``
    is the one key to add.
    """
    from tskd.data import synthetic

    root = synthetic.make_sysu(tmp_path / "SYSU", seed=11, num_train=10, num_val=2, num_test=6,
                               images_per_cam=2)
    (root / synthetic.MARKER).unlink()  # an ordinary dataset folder now, not "ours"
    before = {p.name for p in root.iterdir()}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"TSKD_LOG_DIR": str(outside / "logs")}  # CI points it elsewhere; say where
    run_entry(str(repo / "train.py"), ["dataset=sysu", f"dataset.root={root}", "mode=indoor",
                                       "model.backbone=resnet18", "dataset.img_h=128",
                                       "dataset.img_w=64", "model.pretrained=false",
                                       "trainer=cpu", "trainer.max_epochs=1",
                                       "trainer.limit_train_batches=2", "data.num_workers=0",
                                       "trainer.enable_progress_bar=false"], cwd=outside, env=env)
    (run,) = (outside / "logs" / "train" / "runs").iterdir()
    trained = json.loads((run / "metrics.json").read_text())
    _check_schema(trained, "sysu", 10)
    assert trained["mode"] == "indoor" and trained["img_size"] == [128, 64]
    assert {p.name for p in root.iterdir()} - before == {"tskd_cache"}  # only the cache added
    ckpt = run / "checkpoints" / "last.ckpt"

    def evaluate(log_dir, *keys):
        proc = run_entry(str(repo / "eval.py"), ["mode=indoor", f"ckpt={ckpt}", *keys],
                         cwd=outside, env={"TSKD_LOG_DIR": str(log_dir)})
        (ev,) = (log_dir / "eval" / "runs").iterdir()
        return json.loads((ev / "metrics.json").read_text()), proc

    evaluated, proc = evaluate(outside / "eval_logs")
    assert evaluated["mean"] == trained["mean"]  # same model, same protocol: same numbers
    assert evaluated["trials"] == trained["trials"] and evaluated["mode"] == "indoor"
    assert evaluated["checkpoint"] == str(ckpt.resolve()) and evaluated["img_size"] == [128, 64]
    assert evaluated["data_root"] == str(root.resolve())
    assert "indoor" in proc.stdout
    (tmp_path / "moved").mkdir()
    moved = root.rename(tmp_path / "moved" / "SYSU-MM01")  # the data moved, its cache with it
    again, _ = evaluate(outside / "moved_logs", f"dataset.root={moved}")
    assert again["mean"] == trained["mean"] and again["data_root"] == str(moved.resolve())


def test_llcm_train_then_eval_reports_both_directions(tmp_path, data_dir):
    """LLCM through the registry: one feature pass, both settings, labelled by direction."""
    run = tmp_path / "train"
    run_entry("train.py", ["dataset=synthetic_llcm", *TINY, "trainer.max_epochs=1",
                           f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"])
    trained = json.loads((run / "metrics.json").read_text())
    _check_schema(trained, "llcm", 10)
    assert (trained["mode"], trained["direction"]) == (None, "infrared2visible")
    out = tmp_path / "eval"
    proc = run_entry("eval.py", [f"ckpt={run / 'checkpoints' / 'last.ckpt'}",
                                 "data.num_workers=0", f"hydra.run.dir={out}"])
    metrics = json.loads((out / "metrics.json").read_text())
    _check_schema(metrics, "llcm", 10)
    assert [(r["direction"], r["feature"]) for r in metrics["results"]] == [
        ("infrared2visible", "fc"), ("infrared2visible", "pool"),
        ("visible2infrared", "fc"), ("visible2infrared", "pool")]
    assert metrics["results"] == trained["results"]  # the same model and protocol
    rows = [line.split()[:2] for line in proc.stdout.splitlines()]
    assert ["infrared2visible", "fc"] in rows and ["visible2infrared*", "fc"] in rows
    assert "* visible2infrared (DEEN: sampled IR as queries" in proc.stdout
