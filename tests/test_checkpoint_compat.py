"""Checkpoints stay plain data, and those of the format before the typed schema still evaluate.

tests/fixtures/checkpoint_format2.json is what a ``last.ckpt`` written by commit b60f8f2 (before
the schema) holds besides its tensors. The tests rebuild a checkpoint of exactly that layout for
a small SYSU-layout tree (its counts and root substituted, ``dataset.synthetic`` null: the tree
is not the recorded generator's) around an untrained network, and run the evaluation on it as
eval.py does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tskd.checkpoints.loading import build_module, load_checkpoint, module_arguments
from tskd.config import EvalPassOptions, LossConfig, ModelConfig, OptimConfig, SupervisionConfig
from tskd.core.schema import to_plain
from tskd.data import sysu
from tskd.data.config import DatasetConfig
from tskd.data.synthetic import make_sysu
from tskd.models.tskd_module import TSKDModule
from tskd.runner.run import evaluate_checkpoint

REPO = Path(__file__).resolve().parents[1]
LAYOUT = json.loads((REPO / "tests" / "fixtures" / "checkpoint_format2.json").read_text())
PLAIN = (dict, list, str, int, float, bool, type(None))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_sysu(tmp_path_factory.mktemp("compat") / "SYSU", seed=5, num_train=6, num_val=2,
                     num_test=5, images_per_cam=2, size=(96, 48))


def _old_checkpoint(path: Path, root: Path, older: bool = False) -> Path:
    """A checkpoint in the recorded layout for the tree at ``root``; ``older``: also without
    the whole run config and ``model.compile`` (checkpoints from before those were recorded)."""
    vis, ir = sysu.train_set(str(root))
    counts = {"num_classes": max(r[1] for r in vis) + 1, "num_visible": len(vis),
              "num_infrared": len(ir)}
    text = json.dumps(LAYOUT).replace("<ROOT>", str(root)).replace("<RUN>", str(path.parent))
    layout = json.loads(text)
    hp, meta = layout["hyper_parameters"], {**layout["tskd"], "num_classes": counts["num_classes"]}
    hp.update(counts)
    hp["config"]["dataset"]["synthetic"] = None  # the tree here is not the recorded generator's
    if older:
        del hp["config"], hp["model"]["compile"]
    assert "supervision" not in hp  # the module took no supervision argument then
    torch.manual_seed(0)
    net = TSKDModule(**module_arguments({"hyper_parameters": hp, "tskd": meta}))
    torch.save({"state_dict": net.state_dict(), "hyper_parameters": hp, "tskd": meta}, path)
    return path


@pytest.mark.parametrize("older", [False, True], ids=["format2", "format2-without-config"])
def test_old_checkpoint_still_evaluates(tree, tmp_path, older):
    ckpt = _old_checkpoint(tmp_path / "last.ckpt", tree, older)
    overrides = [f"ckpt={ckpt}", "data.num_workers=0", f"paths.output_dir={tmp_path / 'e'}"]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    metrics = evaluate_checkpoint(cfg, overrides)
    assert json.loads((tmp_path / "e" / "metrics.json").read_text()) == metrics
    assert (metrics["dataset"], len(metrics["trials"]), metrics["img_size"]) == ("sysu", 10,
                                                                                 [64, 32])
    module = build_module(load_checkpoint(ckpt), ckpt)
    assert isinstance(module.loss_cfg, LossConfig) and module.loss_cfg.md_start == 2
    assert module.optim_cfg.milestones == (10, 13) and module.optim_cfg.lr_backbone == 0.03


def test_keys_an_old_checkpoint_lacks_come_from_the_yaml(tree, tmp_path):
    ckpt = load_checkpoint(_old_checkpoint(tmp_path / "last.ckpt", tree, older=True))
    args = module_arguments(ckpt)
    assert args["model"].compile is False  # configs/model/tskd.yaml's value
    assert args["dataset"].settings is None and args["dataset"].root == str(tree)
    assert args["supervision"] is None and args["config"] is None


def test_the_old_eval_rerank_record_is_accepted_and_dropped(tree, tmp_path):
    """Old checkpoints record ``eval: {flip, rerank}``; the module never read ``rerank`` (the
    test callback re-ranks), so new ones record ``flip`` only and loading drops the old key."""
    path = _old_checkpoint(tmp_path / "last.ckpt", tree)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["eval"] == {"flip": False, "rerank": False}  # the fixture
    ckpt["hyper_parameters"]["eval"] = {"flip": True, "rerank": True}
    torch.save(ckpt, path)
    assert module_arguments(load_checkpoint(path))["eval"] == EvalPassOptions(flip=True)
    module = build_module(load_checkpoint(path), path)
    assert module.flip is True and dict(module.hparams)["eval"] == {"flip": True}


def test_a_new_checkpoint_is_plain_and_loads_with_weights_only(tmp_path):
    args = {
        "num_classes": 4, "num_visible": 6, "num_infrared": 5, "channels_last": False,
        "dataset": DatasetConfig.of({"name": "sysu", "root": "/data/SYSU", "img_h": 64,
                                     "img_w": 32, "trial": None, "shots": 1, "cache_dir": None,
                                     "synthetic": {"layout": "sysu", "seed": 3},
                                     "settings": None}, "dataset"),
        "model": ModelConfig.of({**LAYOUT["hyper_parameters"]["model"], "compile": False}),
        "loss": LossConfig.of(LAYOUT["hyper_parameters"]["loss"]),
        "optim": OptimConfig.of(LAYOUT["hyper_parameters"]["optim"]),
        "eval": EvalPassOptions(flip=True),
        "supervision": SupervisionConfig.of({**LAYOUT["hyper_parameters"]["config"]["supervision"],
                                             "name": "noisy", "label_noise": 0.2,
                                             "plot_epochs": [3]}),
    }
    args["config"] = {"seed": 0, "dataset": to_plain(args["dataset"])}  # as train() records
    module = TSKDModule(**args)
    hp = dict(module.hparams)

    def plain(v) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return isinstance(v, PLAIN)

    assert plain(hp), hp
    assert hp["eval"] == {"flip": True}  # re-ranking is the test callback's, not recorded here
    meta: dict = {}
    module.on_save_checkpoint(meta)
    path = tmp_path / "new.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hp, **meta}, path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no pickled objects
    back = module_arguments(ckpt)
    for key in ("model", "loss", "optim", "supervision"):
        assert back[key] == args[key], key
    assert back["eval"] == args["eval"] and back["dataset"] == args["dataset"]
    rebuilt = build_module(ckpt, path)
    assert rebuilt.flip and rebuilt.robust_triplet is False


def test_an_edited_checkpoint_is_refused_naming_the_value(tree, tmp_path):
    path = _old_checkpoint(tmp_path / "last.ckpt", tree)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    bad = copy.deepcopy(ckpt)
    bad["hyper_parameters"]["loss"]["md_form"] = "papr"
    torch.save(bad, path)
    with pytest.raises(Exception, match=r"does not fit the model it describes .*"
                                        r"loss.md_form='papr' must be one of code\|paper"):
        build_module(load_checkpoint(path), path)
