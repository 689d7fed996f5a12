"""A dataset registered from inside a test trains and evaluates end to end (issue 14).

The toy dataset reuses the synthetic SYSU-MM01 tree with a protocol of its own (visible
queries against every infrared image and the reverse, RegDB's metric, one trial), registered
with :func:`tskd.data.registry.register`: no shared file names it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.entry_runs import TINY
from helpers.hydra_compose import compose_config

from tskd.data import registry, sysu
from tskd.data.protocol import INFRARED, VISIBLE, DatasetProtocol, Search

SETTINGS = ("vis2ir", "ir2vis")


def _test_records(root, trial):
    test_ids = sysu.split_ids(root)[1]
    vis = [(p, pid, c) for pid in test_ids for c in (1, 2)
           for p in sysu.list_id_images(root, c, pid)]
    ir = [(p, pid, c) for pid in test_ids for c in sysu.INFRARED_CAMS
          for p in sysu.list_id_images(root, c, pid)]
    return vis + ir, [VISIBLE] * len(vis) + [INFRARED] * len(ir)


def _searches(root, trial, records, settings, shots):
    records, modality = _test_records(root, trial)
    vis = np.flatnonzero(np.array(modality) == VISIBLE)
    ir = np.flatnonzero(np.array(modality) == INFRARED)
    sides = {"vis2ir": (vis, ir), "ir2vis": (ir, vis)}
    return [Search(s, 0, *sides[s]) for s in settings]


TOY = DatasetProtocol(
    name="toy", title="Toy", metric="regdb", settings=SETTINGS, setting_field="direction",
    fixed_labels={"mode": None}, trials=range(1), trial_selects_training=False,
    trial_hint="the toy has trial 0 only", default_settings=lambda mode: SETTINGS,
    train_lists=lambda root, trial: sysu.train_set(root), test_records=_test_records,
    searches=_searches, notes={"ir2vis": "the reverse search"},
)


@pytest.fixture
def toy():
    registry.register(TOY)
    yield TOY
    registry.unregister("toy")


def test_toy_dataset_trains_and_evaluates(toy, tmp_path, data_dir, capsys):
    from tskd.runner.run import evaluate_checkpoint, train

    run = tmp_path / "train"
    cfg = compose_config("train", [
        "experiment=synthetic", *TINY, "dataset.name=toy", "trainer.max_epochs=1",
        f"paths.data_dir={data_dir}", f"paths.output_dir={run}"])
    trained = train(cfg)
    assert trained["dataset"] == "toy" and trained["direction"] == "vis2ir"
    assert [(r["mode"], r["direction"], r["feature"]) for r in trained["results"]] == [
        (None, "vis2ir", "fc"), (None, "vis2ir", "pool"), (None, "ir2vis", "fc"),
        (None, "ir2vis", "pool")]
    assert [t["trial"] for t in trained["trials"]] == [0]
    table = capsys.readouterr().out
    assert "toy test, 1 trial(s)" in table and "* ir2vis (the reverse search)" in table

    out = tmp_path / "eval"
    cfg = compose_config("eval", [f"ckpt={run / 'checkpoints' / 'last.ckpt'}",
                                  "data.num_workers=0", f"paths.output_dir={out}"])
    evaluated = evaluate_checkpoint(cfg, [])
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["dataset"] == "toy" and on_disk["results"] == trained["results"]
    assert evaluated["results"] == trained["results"]


def test_unregistered_names_are_refused_with_the_registered_ones(toy):
    with pytest.raises(Exception, match=r"'nope' is not a protocol; use one of .*'toy'"):
        registry.get("nope")
