"""benchmarks/gpu_check.py --dry-run (and through it benchmarks/epoch.py) on the CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.entry_runs import run_entry

pytestmark = pytest.mark.e2e  # each test here starts train.py, eval.py, an app or another process


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without CUDA")
def test_gpu_check_dry_run_writes_its_report(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = run_entry("benchmarks/gpu_check.py", ["--dry-run", "--out", str(out),
                                                 "--data-root", str(tmp_path / "sysu")])
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["device"].startswith("CPU")
    assert report["gpu_tests"]["status"] == "skipped: no CUDA"
    assert report["ddp_equality"]["status"] == "skipped: no CUDA"
    bench = report["epoch_benchmark"]
    for name in ("fp32", "bf16", "bf16_cl", "bf16_cl_compile"):
        assert bench[name]["status"] == "skipped: no CUDA"
    dry = bench["cpu_dry_run"]
    assert dry["status"] == "ok", dry
    for key in ("images_per_s", "step_s", "gmm_pass_s", "prototype_pass_s", "test_pass_s"):
        assert math.isfinite(dry[key]) and dry[key] > 0, key
    # the epoch table names every part and the 80-epoch prediction
    for part in ("loader alone", "training step alone", "GMM confidence pass",
                 "prototype pass", "test pass, 10 trials", "predicted 80-epoch run"):
        assert part in dry["table"]
    assert "written to" in proc.stdout


def test_cache_hash_benchmark_prints_its_ratio():
    proc = run_entry("benchmarks/cache_hash.py", ["--images", "6", "--repeats", "1"])
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("6 images, array")
    ratio = [line for line in lines if line.startswith("ratio build / open check: ")]
    assert len(ratio) == 1 and float(ratio[0].rsplit(" ", 1)[1].rstrip("x")) > 0
