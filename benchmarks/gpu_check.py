"""One command for the first minutes on a CUDA machine: GPU tests, the epoch benchmark, DDP.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--data-root DIR] [--budget-s 470]
    python benchmarks/gpu_check.py --dry-run      # CPU, tiny sizes: the script itself works

Runs, each in its own process and within one time budget (default under 8 minutes; a part
that no longer fits is recorded as skipped, never half-run):

1. ``pytest -m gpu`` (the tests marked as needing CUDA);
2. ``benchmarks/epoch.py`` for ResNet-50 at 288x144 in ``32-true`` and ``bf16-mixed``, with
   channels-last off/on and ``torch.compile`` off/on (the full-scale synthetic SYSU-MM01);
3. with two or more GPUs: a short training run, then the test pass of its checkpoint on one
   GPU and under DDP on two; their metrics must be equal (the test loader pads and the metric
   drops the repeats, so the split across ranks must not change a number).

Writes one JSON: the card (``torch.cuda.get_device_name``), versions, and per part its result
or "skipped: <why>". ``--dry-run`` runs the same code paths on the CPU at tiny sizes (ResNet-18,
64x32, the small synthetic dataset, one batch per part) and reports the GPU parts as
"skipped: no CUDA", so a default-suite test keeps this script from rotting before a GPU appears.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = "skipped: no CUDA"
# (name, precision, channels-last, compile) of the epoch benchmark matrix
MATRIX = [("fp32", "32-true", False, False), ("bf16", "bf16-mixed", False, False),
          ("bf16_cl", "bf16-mixed", True, False), ("bf16_cl_compile", "bf16-mixed", True, True)]


class Budget:
    """Seconds left of the whole check; parts ask before they start."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """A child process's exit code, wall time and output tail (never raises on failure)."""
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
    return {"returncode": rc, "seconds": round(time.monotonic() - start, 1),
            "output_tail": out[-3000:]}


def gpu_tests(budget: Budget) -> dict:
    if budget.left() < 30:
        return {"status": "skipped: out of time budget"}
    r = _run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
             timeout=min(150, budget.left() - 10))
    r["status"] = "passed" if r["returncode"] == 0 else "failed"
    return r


def epoch_benchmarks(args, budget: Budget, dry: bool) -> dict:
    """The epoch benchmark per configuration (dry: one tiny CPU configuration)."""
    if dry:
        matrix = [("cpu_dry_run", "32-true", False, False)]
        size = ["--backbone", "resnet18", "--img-h", "64", "--img-w", "32", "--batches", "1",
                "--workers", "0", "--num-ids", "2", "--num-pos", "2", "--scale", "small",
                "--device", "cpu"]
    else:
        matrix = MATRIX
        size = ["--backbone", "resnet50", "--img-h", "288", "--img-w", "144", "--batches",
                str(args.batches), "--workers", str(args.workers), "--device", "cuda"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, precision, cl, comp in matrix:
            if budget.left() < 45:
                out[name] = {"status": "skipped: out of time budget"}
                continue
            js = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(REPO / "benchmarks" / "epoch.py"), *size,
                   "--precision", precision, "--data-root", str(args.data_root),
                   "--json", str(js), *(["--channels-last"] if cl else []),
                   *(["--compile"] if comp else [])]
            r = _run(cmd, timeout=budget.left() - 15)
            if r["returncode"] == 0 and js.is_file():
                res = json.loads(js.read_text())
                out[name] = {"status": "ok", "seconds": r["seconds"],
                             "images_per_s": res["images_per_step"] / res["step"]["per_step_s"],
                             "step_s": res["step"]["per_step_s"],
                             "gmm_pass_s": res["gmm_pass"]["total_s"],
                             "prototype_pass_s": res["prototype_pass"]["total_s"],
                             "test_pass_s": res["test_pass"]["total_s"],
                             "table": res["table"]}
            else:
                out[name] = {"status": "failed", **r}
    return out


def ddp_equality(args, budget: Budget) -> dict:
    """Test metrics of one checkpoint on 1 GPU and under DDP on 2 GPUs must be equal."""
    if torch.cuda.device_count() < 2:
        return {"status": "skipped: fewer than 2 GPUs"}
    if budget.left() < 120:
        return {"status": "skipped: out of time budget"}
    with tempfile.TemporaryDirectory() as tmp:
        common = ["dataset=synthetic", f"paths.data_dir={tmp}/data", "data.num_workers=2",
                  "dataset.img_h=64", "dataset.img_w=32"]
        train = _run([sys.executable, "train.py", "experiment=synthetic", *common,
                      "trainer=gpu", "trainer.max_epochs=2", "trainer.limit_train_batches=5",
                      "test_after_training=false", f"hydra.run.dir={tmp}/train"],
                     timeout=budget.left() - 60)
        if train["returncode"] != 0:
            return {"status": "failed: training", **train}
        ckpt = f"{tmp}/train/checkpoints/last.ckpt"
        metrics = {}
        for name, trainer in (("1gpu", ["trainer=gpu", "trainer.precision=32-true"]),
                              ("2gpu_ddp", ["trainer=ddp", "trainer.devices=2",
                                            "trainer.precision=32-true"])):
            r = _run([sys.executable, "eval.py", f"ckpt={ckpt}", *common, *trainer,
                      f"hydra.run.dir={tmp}/{name}"], timeout=max(10, budget.left() - 10))
            if r["returncode"] != 0:
                return {"status": f"failed: eval {name}", **r}
            metrics[name] = json.loads(Path(f"{tmp}/{name}/metrics.json").read_text())
        a, b = (metrics[k]["mean"] for k in ("1gpu", "2gpu_ddp"))
        diff = {k: abs(a[k] - b[k]) for k in a if isinstance(a[k], int | float)}
        equal = max(diff.values()) <= 1e-6
        return {"status": "passed" if equal else "failed: metrics differ", "diff": diff,
                "1gpu": a, "2gpu_ddp": b}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" /
                    "gpu_check.json")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="synthetic dataset folder (default: the epoch benchmark's)")
    ap.add_argument("--budget-s", type=float, default=470.0, help="the whole check's limit")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, GPU parts skipped")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    dry = args.dry_run or not torch.cuda.is_available()
    budget = Budget(args.budget_s)
    if args.data_root is None:
        sub = "sysu_small_dry" if dry else "sysu_full"
        args.data_root = Path(os.environ.get("TSKD_BENCH_DATA", "/tmp/tskd_bench")) / sub
    report = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.machine()})",
        "gpus": torch.cuda.device_count() if cuda else 0, "dry_run": dry,
        "torch": torch.__version__, "python": platform.python_version(),
        "gpu_tests": gpu_tests(budget) if cuda else {"status": NO_CUDA},
        "epoch_benchmark": epoch_benchmarks(args, budget, dry),
        "ddp_equality": ddp_equality(args, budget) if cuda else {"status": NO_CUDA},
    }
    if dry:  # the GPU matrix itself was not measured
        for name, *_ in MATRIX:
            report["epoch_benchmark"].setdefault(name, {"status": NO_CUDA})
    report["seconds"] = round(args.budget_s - budget.left(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for part in ("gpu_tests", "ddp_equality"):
        print(f"{part}: {report[part]['status']}")
    for name, r in report["epoch_benchmark"].items():
        extra = f" {r['images_per_s']:.1f} images/s" if "images_per_s" in r else ""
        print(f"epoch benchmark {name}: {r['status']}{extra}")
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
