"""A multirun over RegDB splits ends with summary.json whose numbers are the runs' mean/std."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, run_entry


def test_two_split_multirun_writes_correct_summary(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    args = [a for a in TINY if not a.startswith("logger=")]
    run_entry("train.py", ["-m", "dataset=synthetic_regdb", "dataset.trial=1,2", *args,
                           "logger=tensorboard", "trainer.max_epochs=1",
                           f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}"])
    runs = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in (0, 1)]
    assert [r["trials"][0]["trial"] for r in runs] == [1, 2]
    assert list((sweep / "0" / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["counts"]["ok"] == 2 and summary["counts"]["failed"] == 0
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
