"""Issue 12's optimisations, each measured against the code it replaced in one run.

    python benchmarks/optimisations.py [--backbone resnet18] [--img-h 128] [--img-w 64]
        [--workers 2] [--epochs 3] [--batches 4] [--step-batches 3] [--reps 20]
        [--data-root DIR] [--out FILE] [--dry-run]

The old forms are the copies in ``tests/helpers/before_issue12.py``; old and new run interleaved on
the same inputs, and every ratio is old / new (> 1: the new form is faster). On the full-scale
synthetic SYSU-MM01 of ``benchmarks/epoch.py`` (same cache folder):

1. **persistent loader workers**: ``--epochs`` epochs of ``--batches`` training batches with
   ``--workers`` workers, restarted every epoch (before) vs persistent (after); also the
   start-up saved per epoch and what it is worth at a full epoch's length.
2. **host synchronisations in the losses**: for each loss (triplet, self-mimic, MD, and the
   per-modality triplet, whose per-group loop became one batched mining) the number of device
   values the host reads per call, i.e. the synchronisations the call would make on a GPU
   (counted by running the call on tensors that record those reads), the CPU time of
   forward + backward, and whether value and gradients are bit-identical;
   then the whole training step (``TSKDModule.training_step`` in ``Trainer.fit``, stage II) with
   the old losses vs the new ones.
3. **uint8 instead of float32 from the workers** (not adopted, sized here): the test loader
   shipping uint8 images and normalising after the batch arrives, vs float32 items; whether
   the normalised batches are identical, bytes per batch, images/s.

``--dry-run`` runs every part on the small synthetic SYSU-MM01 with tiny sizes (for the test
suite). Output: the table on stdout and in ``--out`` (default
``benchmarks/results/optimisations_cpu.txt``, with the command and the machine in its header).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the old code and the loss checks: tests/helpers/

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers import before_issue12 as old  # noqa: E402
from helpers.loss_equivalence import (  # noqa: E402
    host_reads,
    identical,
    loss_calls,
    loss_inputs,
    value_and_grad,
)

from benchmarks.epoch import DEFAULT_ROOT, build_datamodule, build_module, time_steps  # noqa: E402
from tskd.data.datasets import TestImageSet  # noqa: E402
from tskd.data.transforms import _as_chw_uint8, normalize  # noqa: E402

STEPS_PER_EPOCH = 696  # full-scale SYSU-MM01, P*K = 32 (benchmarks/results/epoch_cpu.txt)


def _interleaved(fns: dict, rounds: int, reps: int) -> dict:
    """Median seconds per call of each function, rounds interleaved."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            fn()  # warm-up
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            times[k].append((time.perf_counter() - start) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_losses(args) -> list[dict]:
    x = loss_inputs(args.num_ids, args.num_pos, args.dim, 395)
    partial = loss_inputs(args.num_ids, args.num_pos, args.dim, 395, seed=1,
                          all_prototypes=False)
    rows = []
    for name, (before, after) in loss_calls(x).items():
        def step(call):
            return lambda: value_and_grad(call, x["feats"])
        t = _interleaved({"before": step(before), "after": step(after)}, args.rounds, args.reps)
        reads = host_reads(x, name)
        rows.append({"name": name, "before_s": t["before"], "after_s": t["after"],
                     "reads_before": reads[0], "reads_after": reads[1],
                     "identical": identical(x, name) and identical(partial, name)})
    return rows


# ------------------------------------------------------------------------- training step
def bench_step(args, dm) -> dict:
    """The stage-II training step with the old losses vs the new ones (same weights)."""
    ns = SimpleNamespace(backbone=args.backbone, compile=False, data_root=args.data_root,
                         img_h=args.img_h, img_w=args.img_w, channels_last=False,
                         device="cpu", precision="32-true")
    step_loss = {"ce_only_epochs": 0, "md_start": 0, "soft_identity": False,
                 "prototype_pass": False}
    dm.num_workers = 0
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(args.step_batches + 1)]
    del it
    times = {"before": [], "after": []}
    for _ in range(args.rounds):
        for name in ("before", "after"):
            torch.manual_seed(0)
            module = build_module(ns, dm, **step_loss)
            g = torch.Generator().manual_seed(0)  # every prototype exists: SM in full
            module.bank.prototypes.copy_(torch.randn(module.bank.prototypes.shape, generator=g))
            module.bank.valid.fill_(True)
            if name == "before":
                module.triplet = old.OldTriplet(margin=module.triplet.margin)
                module.sm = old.OldSelfMimic(module.sm.metric, module.sm.form)
                module.md = old.OldMutualDistillation(module.md.form, module.md.bandwidth)
            times[name].append(time_steps(ns, module, batches)["per_step_s"])
    before, after = (statistics.median(times[k]) for k in ("before", "after"))
    return {"before_s": before, "after_s": after, "rounds": times}


# ------------------------------------------------------------------------------ loaders
def _epochs(make_loader, dm, epochs: int, batches: int) -> list[float]:
    """Seconds of each epoch's first ``batches`` batches, iterator start and end included."""
    loader = make_loader(dm)
    out = []
    for e in range(epochs):
        loader.batch_sampler.set_epoch(e)
        start = time.perf_counter()
        it = iter(loader)
        for _ in range(batches):
            next(it)
        del it  # restarted workers shut down here; persistent ones stay
        out.append(time.perf_counter() - start)
    del loader
    return out


def bench_persistent(args, dm) -> dict:
    dm.num_workers = args.workers
    runs = {"before": [], "after": []}
    for _ in range(args.rounds):
        runs["before"].append(_epochs(old.old_train_dataloader, dm, args.epochs, args.batches))
        runs["after"].append(_epochs(lambda d: d.train_dataloader(), dm, args.epochs,
                                     args.batches))
    med = {k: [statistics.median(r[e] for r in v) for e in range(args.epochs)]
           for k, v in runs.items()}
    # every epoch of the old loader starts workers; the persistent one only its first
    later = slice(1, None)
    per_batch = statistics.median(med["after"][later]) / args.batches
    start_cost = statistics.median(np.subtract(med["before"][later], med["after"][later]))
    return {"before_s": sum(med["before"]), "after_s": sum(med["after"]),
            "start_cost_s": float(start_cost), "per_batch_s": per_batch,
            "epochs": med}


class _Uint8TestSet(TestImageSet):
    """Test items as uint8 (3, H, W): the normalisation moves to after the batch arrives."""

    __test__ = False

    def __getitem__(self, i: int):
        row = int(self.indices[i])
        return _as_chw_uint8(self.images[row]), int(self.modality[row]), row


def bench_uint8(args, dm) -> dict:
    dm.num_workers = args.workers
    loader = dm.test_dataloader()
    ds = loader.dataset
    u8 = torch.utils.data.DataLoader(
        _Uint8TestSet(ds.images, ds.modality, ds.indices), batch_size=loader.batch_size,
        num_workers=args.workers)
    n = min(args.test_batches, len(loader))

    def consume(dl, norm):
        it = iter(dl)
        next(it)  # worker start-up not timed
        start = time.perf_counter()
        for _ in range(n):
            x = next(it)[0]
            if norm:
                x = normalize(x.float().div_(255.0))
        del it
        return (time.perf_counter() - start) / n

    t = _interleaved({"float32": lambda: consume(loader, False),
                      "uint8": lambda: consume(u8, True)}, args.rounds, 1)
    a, b = next(iter(loader)), next(iter(u8))
    same = torch.equal(a[0], normalize(b[0].float().div_(255.0)))
    return {"float32_s": t["float32"], "uint8_s": t["uint8"], "batch": loader.batch_size,
            "bytes_float32": a[0].element_size() * a[0].numel(),
            "bytes_uint8": b[0].element_size() * b[0].numel(), "identical": same}


# ---------------------------------------------------------------------------------- run
def _machine() -> str:
    return (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
            f"({len(os.sched_getaffinity(0))} usable), torch {torch.__version__}")


def run(args) -> str:
    torch.manual_seed(0)
    synthetic = {"layout": "sysu", "seed": 0, "scale": args.scale}
    dm = build_datamodule(args, 0, synthetic)
    dm.prepare_data()
    dm.setup("fit")
    lines = [
        f"# benchmarks/optimisations.py on {_machine()}",
        f"# data: {args.scale}-scale synthetic SYSU-MM01 ({len(dm.visible_labels)} visible + "
        f"{len(dm.infrared_labels)} infrared training images), {args.img_h}x{args.img_w}, "
        f"P={args.num_ids} K={args.num_pos}",
        f"# command: python benchmarks/optimisations.py {' '.join(args.argv)}".rstrip(),
        "# ratios are before / after, measured interleaved in this run (>1: after is faster);"
        " median of the rounds",
        "",
    ]
    p = bench_persistent(args, dm)
    epoch_before = p["start_cost_s"] + STEPS_PER_EPOCH * p["per_batch_s"]
    epoch_after = STEPS_PER_EPOCH * p["per_batch_s"]
    lines += [
        f"1. persistent loader workers ({args.workers} workers, {args.epochs} epochs x "
        f"{args.batches} batches):",
        f"   restarted {p['before_s']:.2f} s / persistent {p['after_s']:.2f} s = "
        f"{p['before_s'] / p['after_s']:.2f}x; start-up saved per epoch "
        f"{p['start_cost_s']:.2f} s",
        f"   at {STEPS_PER_EPOCH} batches per epoch (loader alone): "
        f"{epoch_before / epoch_after:.3f}x",
        "",
        f"2. host synchronisations in the losses (3B = {3 * args.num_ids * args.num_pos} "
        f"features of {args.dim}; forward + backward on the CPU; reads = device values the host "
        "reads per call = synchronisations on a GPU):",
        f"   {'loss':<22}{'reads before':>13}{'after':>7}{'ms before':>11}{'after':>8}"
        f"{'ratio':>8}  bit-identical",
    ]
    reads = [0, 0]
    for r in bench_losses(args):
        reads = [reads[0] + r["reads_before"] * (r["name"] != "triplet per modality"),
                 reads[1] + r["reads_after"] * (r["name"] != "triplet per modality")]
        lines.append(f"   {r['name']:<22}{r['reads_before']:>13}{r['reads_after']:>7}"
                     f"{r['before_s'] * 1e3:>11.3f}{r['after_s'] * 1e3:>8.3f}"
                     f"{r['before_s'] / r['after_s']:>7.2f}x  "
                     f"{'yes' if r['identical'] else 'NO'} (value and gradient)")
    lines.append(f"   stage-II step with the default losses (triplet, self-mimic, MD): "
                 f"{reads[0]} -> {reads[1]} host reads per step in the losses")
    if args.step_batches > 0:
        s = bench_step(args, dm)
        lines.append(f"   whole training step ({args.backbone}, {args.step_batches} steps): "
                     f"{s['before_s'] * 1e3:.1f} / {s['after_s'] * 1e3:.1f} ms/step = "
                     f"{s['before_s'] / s['after_s']:.3f}x")
        spread = "; ".join(f"{k} " + ", ".join(f"{t * 1e3:.0f}" for t in v)
                           for k, v in s["rounds"].items())
        lines.append(f"   (ms/step of each round: {spread}: differences of this size between "
                     "rounds are this shared machine's noise)")
    u = bench_uint8(args, dm)
    lines += [
        "",
        f"3. uint8 instead of float32 from the test loader's workers (not adopted; "
        f"{args.workers} workers, batches of {u['batch']}):",
        f"   bytes per batch {u['bytes_float32'] / 2**20:.2f} MiB float32 vs "
        f"{u['bytes_uint8'] / 2**20:.2f} MiB uint8 "
        f"({u['bytes_float32'] / u['bytes_uint8']:.0f}x less to copy)",
        f"   per batch: float32 {u['float32_s'] * 1e3:.1f} ms / uint8 + normalisation here "
        f"{u['uint8_s'] * 1e3:.1f} ms = {u['float32_s'] / u['uint8_s']:.2f}x; normalised "
        f"batches identical: {'yes' if u['identical'] else 'NO'}",
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--img-h", type=int, default=128)
    ap.add_argument("--img-w", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="loader epochs (part 1)")
    ap.add_argument("--batches", type=int, default=4, help="loader batches per epoch (part 1)")
    ap.add_argument("--step-batches", type=int, default=3,
                    help="timed training steps per variant (part 2); 0 skips the step")
    ap.add_argument("--test-batches", type=int, default=6, help="test-loader batches (part 3)")
    ap.add_argument("--reps", type=int, default=20, help="loss calls per timing")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per comparison")
    ap.add_argument("--dim", type=int, default=512, help="feature size (resnet18: 512)")
    ap.add_argument("--num-ids", type=int, default=8, help="P")
    ap.add_argument("--num-pos", type=int, default=4, help="K")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--scale", default="full", choices=["full", "small"])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" /
                    "optimisations_cpu.txt")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes on the small synthetic SYSU-MM01 (for the test suite)")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.scale, args.img_h, args.img_w = "small", 32, 16
        args.epochs, args.batches, args.step_batches, args.test_batches = 2, 1, 1, 1
        args.reps, args.rounds, args.dim, args.num_ids, args.num_pos = 2, 1, 16, 4, 2
    args.argv = argv
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    report = run(args)
    print(report, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n")
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
