"""Where an epoch's time goes, at SYSU-MM01 scale, on the current device.

    python benchmarks/epoch.py [--backbone resnet18] [--img-h 128] [--img-w 64]
        [--precision 32-true] [--channels-last] [--compile] [--batches 8] [--workers 2]
        [--data-root DIR] [--device cpu|cuda] [--compare-logging] [--json FILE]

Builds (once, cached in ``--data-root``) the full-scale synthetic SYSU-MM01 of
:func:`tskd.data.synthetic.make_sysu_full` (22,258 visible + 11,909 infrared training images,
3,803 queries), then measures each part of an epoch with the project's own components:

- loader alone: the datamodule's training loader with 0, 1 and ``--workers`` workers
  (batches/s, images/s; the first batch, which includes starting the workers, is timed apart);
- training step alone: ``TSKDModule.training_step`` inside a real Lightning ``Trainer.fit``
  (forward, the stage-II losses, backward, SGD step, logging) over batches loaded beforehand;
- the GMM confidence pass (:func:`tskd.models.epoch_passes.augmented_losses` over the
  datamodule's confidence loader, then the GMM fits on full-length loss vectors);
- the prototype pass (:func:`~tskd.models.epoch_passes.accumulate_prototypes` over the
  datamodule's prototype loader, then ``PrototypeBank.finalize``);
- the full 10-trial test pass (``TSKDModule.test_step`` on the datamodule's test loader, then
  ``RetrievalMetric.compute`` over every needed image).

Each loop part runs ``--batches`` batches (after one untimed warm-up batch, which absorbs
``torch.compile``) and is extrapolated to the whole epoch; the GMM fits and the retrieval
metric run at full size. An epoch has ``floor(N / (P*K)) + 1`` steps, N = max(#visible,
#infrared). ``--compare-logging`` also times the step with the per-step logging this project
used before (every term reduced across ranks each step), in the same run, as a ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from tskd.config import (  # noqa: E402
    DataConfig,
    DatasetConfig,
    EvalPassOptions,
    LossConfig,
    ModelConfig,
    OptimConfig,
    yaml_values,
)
from tskd.core.schema import build  # noqa: E402
from tskd.data.datamodule import ReIDDataModule  # noqa: E402
from tskd.data.synthetic import ensure_synthetic  # noqa: E402
from tskd.losses import gmm_confidence, visible_view_confidences  # noqa: E402
from tskd.metrics.retrieval import RetrievalMetric  # noqa: E402
from tskd.models.epoch_passes import accumulate_prototypes, augmented_losses  # noqa: E402
from tskd.models.tskd_module import TSKDModule  # noqa: E402

EPOCHS = 80  # the paper's schedule (configs/trainer/default.yaml)
DEFAULT_ROOT = Path(os.environ.get("TSKD_BENCH_DATA", "/tmp/tskd_bench")) / "sysu_full"


# ---------------------------------------------------------------------------------- helpers
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Clock:
    """Wall seconds of a block, the device synchronised at both ends."""

    def __init__(self, device: str) -> None:
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> _Clock:
        _sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        _sync(self.device)
        self.seconds = time.perf_counter() - self.start


def _dataset(args) -> DatasetConfig:
    return build(DatasetConfig, {**yaml_values("dataset/sysu.yaml"), "root": str(args.data_root),
                                 "img_h": args.img_h, "img_w": args.img_w})


def build_datamodule(args, workers: int, synthetic: dict | None) -> ReIDDataModule:
    """The real datamodule on the dataset at ``args.data_root`` with the recipe's batches.

    ``synthetic`` (``layout``, ``seed``, ``scale``) is generated here first: the config's
    ``dataset.synthetic`` has no ``scale``, the full-scale SYSU-MM01 is this benchmark's own.
    """
    if synthetic is not None:
        ensure_synthetic(args.data_root, **synthetic)
    pad = round(10 * args.img_w / 144)  # the paper's 10 px at 144 px, kept proportional
    data = build(DataConfig, {**yaml_values("train.yaml", "data"), "num_ids": args.num_ids,
                              "num_pos": args.num_pos, "num_workers": workers, "pad": pad})
    return ReIDDataModule(_dataset(args), data, mode="all", seed=0)


def build_module(args, dm: ReIDDataModule, **loss_overrides) -> TSKDModule:
    """A TSKDModule with the shipped model/loss/optim configs (random init, no download)."""
    model = {**yaml_values("model/tskd.yaml"), "backbone": args.backbone, "pretrained": False,
             "compile": args.compile}
    loss = {**yaml_values("loss/tskd.yaml"), **loss_overrides}
    return TSKDModule(
        num_classes=dm.num_classes, num_visible=len(dm.visible_labels),
        num_infrared=len(dm.infrared_labels), dataset=_dataset(args),
        model=build(ModelConfig, model), loss=build(LossConfig, loss),
        optim=build(OptimConfig, yaml_values("train.yaml", "optim")),
        eval=build(EvalPassOptions, yaml_values("train.yaml", "eval")),
        channels_last=args.channels_last,
    )


def _trainer(args, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1,
        precision=args.precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, use_distributed_sampler=False, **kw,
    )


# ------------------------------------------------------------------------------ the parts
def time_loader(dm: ReIDDataModule, workers: int, batches: int) -> dict:
    """Seconds of the first batch (worker start-up included) and per later batch.

    While the first batch is made, the other workers make theirs and queue more (prefetch): a
    short timing right after it would mostly read ready batches and overstate the rate, so the
    batches that can be queued by then are drawn untimed first.
    """
    dm.num_workers = workers
    loader = dm.train_dataloader()
    it = iter(loader)
    start = time.perf_counter()
    next(it)
    first = time.perf_counter() - start
    queued = workers * (loader.prefetch_factor or 0)
    batches = max(1, min(batches, len(loader) - 1 - queued))  # a small (dry-run) epoch ends
    for _ in range(queued):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    per_batch = (time.perf_counter() - start) / batches
    del it
    return {"workers": workers, "first_batch_s": first, "per_batch_s": per_batch}


class _StepTimer(pl.Callback):
    """Wall time of batches ``warm`` .. end inside ``fit`` (device synced only at the ends)."""

    def __init__(self, device: str, warm: int) -> None:
        self.device, self.warm = device, warm
        self.start = self.end = None
        self.first_s = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.t0 = time.perf_counter()
        if batch_idx == self.warm:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            _sync(self.device)
            self.first_s = time.perf_counter() - self.t0
        if batch_idx == trainer.num_training_batches - 1:
            _sync(self.device)
            self.end = time.perf_counter()


class _FixedBatches(torch.utils.data.Dataset):
    """Batches loaded beforehand, served as they are: the step is timed without the loader."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.batches[i]


def time_steps(args, module: TSKDModule, batches: list, warm: int = 1) -> dict:
    """Per-step seconds of ``Trainer.fit`` over ``batches`` (the first ``warm`` untimed)."""
    timer = _StepTimer(args.device, warm)
    loader = torch.utils.data.DataLoader(_FixedBatches(batches), batch_size=None)
    trainer = _trainer(args, max_epochs=1, callbacks=[timer])
    trainer.fit(module, train_dataloaders=loader)
    steps = len(batches) - warm
    return {"per_step_s": (timer.end - timer.start) / steps, "first_step_s": timer.first_s,
            "trainer": trainer}


def _first_and_rest(loader, run, batches: int, device: str) -> tuple[float, float]:
    """(seconds of ``run`` on the first batch, seconds per batch of the next ``batches``).

    The first batch pays the worker start-up (every epoch: the loaders are not persistent) and,
    with ``--compile``, the compilation of its graph; it is timed apart, not extrapolated.
    """
    it = iter(loader)
    with _Clock(device) as first:
        run([next(it)])
    with _Clock(device) as rest:
        run(itertools.islice(it, batches))
    return first.seconds, rest.seconds / batches


def time_gmm_pass(args, module, dm, context, batches: int) -> dict:
    """The confidence pass: sampled loader+forward batches, full-size GMM fits."""
    loader = dm.augmented_confidence_dataloader(epoch=1)
    n_vis, n_ir = len(dm.visible_labels), len(dm.infrared_labels)
    n = len(loader)
    losses = [torch.zeros(k, device=args.device) for k in (n_vis, n_vis, n_ir)]

    def run(items):
        for acc, t in zip(losses, augmented_losses(module.net, items, n_vis, n_ir, context)):
            acc += t

    first, per = _first_and_rest(loader, run, batches, args.device)
    forward_s = first + per * (n - 1)
    # Full-length loss vectors for the fits: the sampled losses repeated over every row.
    seen = [t[t != 0].cpu().numpy() for t in losses]
    full = [torch.as_tensor(np.resize(v, k), device=args.device)
            for v, k in zip(seen, (n_vis, n_vis, n_ir))]
    gmm = dataclasses.asdict(module.loss_cfg.gmm)
    with _Clock(args.device) as fit:
        visible_view_confidences(full[0], full[1], **gmm)
        gmm_confidence(full[2], **gmm)
    return {"batches": n, "first_batch_s": first, "per_batch_s": per, "forward_s": forward_s,
            "gmm_fit_s": fit.seconds, "total_s": forward_s + fit.seconds}


def time_prototype_pass(args, module, dm, context, steps: int, batches: int) -> dict:
    """The prototype pass over the epoch's ``steps`` slots; leaves prototypes in the bank."""
    loader = dm.prototype_dataloader(epoch=1, num_batches=steps)

    def run(items):
        accumulate_prototypes(module.net, items, module.bank, module.confidences, context)

    first, per = _first_and_rest(loader, run, batches, args.device)
    with _Clock(args.device) as fin:
        module.bank.finalize()
    total = first + per * (steps - 1) + fin.seconds
    return {"first_batch_s": first, "per_batch_s": per, "total_s": total}


def time_test_pass(args, module, dm, context, batches: int) -> dict:
    """Embedding (``test_step`` on test-loader batches) + the 10-trial metric at full size."""
    module.eval()
    loader = dm.test_dataloader()

    def run(items):
        with torch.no_grad(), context():
            for i, b in enumerate(items):
                module.test_step(_to(b, module.device), i)

    first, per = _first_and_rest(loader, run, batches, args.device)
    embed_s = first + per * (len(loader) - 1)
    # The metric over every needed image, with random unit features of the right shape.
    protocol, dim = dm.protocol, module.net.feat_dim
    needed = torch.as_tensor(protocol.needed())
    metric = RetrievalMetric(protocol).to(module.device)
    g = torch.Generator().manual_seed(0)
    for rows in needed.split(1024):
        feats = [torch.nn.functional.normalize(torch.randn(len(rows), dim, generator=g), dim=1)
                 .to(module.device) for _ in range(2)]
        meta = [torch.as_tensor(a[rows.numpy()]) for a in (protocol.pids, protocol.cams,
                                                            protocol.modality)]
        metric.update(*feats, *(m.to(module.device) for m in meta), rows.to(module.device))
    with _Clock(args.device) as clock:
        metric.compute()
    module.train()
    return {"images": len(needed), "batches": len(loader), "embed_s": embed_s,
            "metric_s": clock.seconds, "total_s": embed_s + clock.seconds}


def _to(batch, device):
    return tuple(t.to(device) if torch.is_tensor(t) else t for t in batch)


class _LegacyLogging(TSKDModule):
    """The per-step logging before issue 12: each term reduced across ranks every step."""

    def _log_terms(self, values: dict, batch_size: int) -> None:
        for name, value in values.items():
            self.log(f"train/{name}", value, prog_bar=name != "loss", on_step=True,
                     on_epoch=True, batch_size=batch_size, sync_dist=True)
        self.log("train/stage", float({"warmup": 0, "I": 1, "II": 2}[self.stage]),
                 on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)


# ------------------------------------------------------------------------------- the run
def run(args) -> dict:
    torch.manual_seed(0)
    synthetic = None if args.real_data else {"layout": "sysu", "seed": 0, "scale": args.scale}
    dm = build_datamodule(args, 0, synthetic)
    t0 = time.perf_counter()
    dm.prepare_data()
    dm.setup("fit")
    prep_s = time.perf_counter() - t0
    n_vis, n_ir = len(dm.visible_labels), len(dm.infrared_labels)
    steps = len(dm.train_dataloader())
    pk = args.num_ids * args.num_pos
    assert steps == max(n_vis, n_ir) // pk + 1, "epoch length differs from floor(N/(P*K))+1"
    out = {"device": _device_name(args.device), "settings": vars(args) | {"data_root": str(
        args.data_root)}, "dataset": {"classes": dm.num_classes, "visible": n_vis,
                                      "infrared": n_ir, "test_images": len(dm.protocol.paths),
                                      "queries": int(len(dm.protocol.searches[0].query))},
           "steps_per_epoch": steps, "images_per_step": 3 * pk, "prepare_s": prep_s}
    # 1. loader alone
    out["loader"] = [time_loader(dm, w, args.loader_batches)
                     for w in sorted({0, 1, args.workers})]
    # 2. training step alone (Lightning fit over batches loaded beforehand); stage II (every
    # loss on) from the first epoch, no GMM pass at its start and the bank summed in the step
    # (prototype_pass=false), so fit runs no pass of its own.
    dm.num_workers = 0
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(args.batches + 1)]
    del it
    step_loss = {"ce_only_epochs": 0, "md_start": 0, "soft_identity": False,
                 "prototype_pass": False}
    module = build_module(args, dm, **step_loss)
    context = _trainer(args).precision_plugin.forward_context
    module.to(args.device)
    dm.num_workers = args.workers
    # 3. the passes first: the prototype pass fills the bank, so the step computes the
    # self-mimic term as in a real stage-II epoch (with an empty bank it is skipped).
    out["gmm_pass"] = time_gmm_pass(args, module, dm, context, args.batches)
    out["prototype_pass"] = time_prototype_pass(args, module, dm, context, steps,
                                                  args.batches)
    out["test_pass"] = time_test_pass(args, module, dm, context, args.batches)
    step = time_steps(args, module, batches)
    out["step"] = {k: v for k, v in step.items() if k != "trainer"}
    if args.compare_logging:
        out["logging"] = compare_logging(args, dm, batches, step_loss)
    return out


def compare_logging(args, dm, batches, step_loss, rounds: int = 2) -> dict:
    """Step time with the previous per-step logging vs the current one, interleaved."""
    times = {"before": [], "after": []}
    for _ in range(rounds):
        for name, cls in (("before", _LegacyLogging), ("after", TSKDModule)):
            torch.manual_seed(0)
            module = build_module(args, dm, **step_loss)
            module.__class__ = cls  # same weights and init, only the logging differs
            times[name].append(time_steps(args, module, batches)["per_step_s"])
    before, after = (float(np.median(times[k])) for k in ("before", "after"))
    return {"before_s": before, "after_s": after, "ratio_before_over_after": before / after}


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores " \
           f"({len(os.sched_getaffinity(0))} usable), torch {torch.__version__}"


# ---------------------------------------------------------------------------- the table
def table(r: dict) -> str:
    """The printed report: seconds per epoch, shares, loader-vs-step, an 80-epoch run."""
    s, steps = r["settings"], r["steps_per_epoch"]
    step_epoch = r["step"]["per_step_s"] * steps
    loaders = {x["workers"]: x for x in r["loader"]}
    best_w = s["workers"]
    load_epoch = loaders[best_w]["per_batch_s"] * steps + loaders[best_w]["first_batch_s"]
    # With workers the loader runs beside the step: the loop takes the slower of the two.
    loop = max(step_epoch, load_epoch) if best_w > 0 else step_epoch + load_epoch
    gmm, proto = r["gmm_pass"]["total_s"], r["prototype_pass"]["total_s"]
    test = r["test_pass"]["total_s"]
    epoch = loop + gmm + proto
    ce_only = yaml_values("loss/tskd.yaml")["ce_only_epochs"]
    run80 = EPOCHS * loop + (EPOCHS - ce_only) * (gmm + proto) + test
    ips = r["images_per_step"]
    lines = [
        f"# benchmarks/epoch.py on {r['device']}",
        f"# {s['backbone']} {s['img_h']}x{s['img_w']}, precision {s['precision']}, "
        f"channels_last={s['channels_last']}, compile={s['compile']}, device {s['device']}",
        f"# data: {_data_name(s)} ({r['dataset']['visible']} visible + "
        f"{r['dataset']['infrared']} infrared training images, {r['dataset']['classes']} ids, "
        f"{r['dataset']['queries']} queries); P*K={ips // 3}, {ips} images per step, "
        f"{steps} steps per epoch = floor(N/(P*K))+1",
        f"# each loop part timed on {s['batches']} batches after 1 warm-up batch and "
        "extrapolated to the whole epoch; GMM fits and retrieval metric at full size",
        "",
        "loader alone (training batches, no model):",
    ]
    for w, x in sorted(loaders.items()):
        lines.append(f"  workers={w}: {ips / x['per_batch_s']:8.1f} images/s "
                     f"({1 / x['per_batch_s']:6.2f} batches/s), first batch "
                     f"{x['first_batch_s']:.2f} s, {x['per_batch_s'] * steps:8.1f} s/epoch")
    lines += [
        f"training step alone: {ips / r['step']['per_step_s']:8.1f} images/s, "
        f"{r['step']['per_step_s'] * 1e3:.1f} ms/step "
        f"(first step {r['step']['first_step_s']:.2f} s)",
        f"loader ({best_w} workers) / step time per batch: "
        f"{loaders[best_w]['per_batch_s'] / r['step']['per_step_s']:.2f}  (>1: input-bound)",
        "",
        f"{'part':<34}{'s/epoch':>10}{'share':>8}",
    ]
    rows = [("training loop (step ‖ loader)", loop), ("  of which step", step_epoch),
            (f"  of which loader ({best_w} workers)", load_epoch),
            ("GMM confidence pass", gmm),
            (f"  forward {r['gmm_pass']['batches']} batches", r["gmm_pass"]["forward_s"]),
            ("  GMM fits", r["gmm_pass"]["gmm_fit_s"]), ("prototype pass", proto)]
    for name, sec in rows:
        lines.append(f"{name:<34}{sec:>10.1f}{100 * sec / epoch:>7.1f}%")
    lines += [
        f"{'epoch (loop + passes)':<34}{epoch:>10.1f}{100.0:>7.1f}%",
        f"{'test pass, 10 trials (once a run)':<34}{test:>10.1f}{100 * test / epoch:>7.1f}%"
        f"  (embed {r['test_pass']['embed_s']:.1f} s + metric {r['test_pass']['metric_s']:.1f} s"
        f" over {r['test_pass']['images']} images; share: if run every epoch)",
        "",
        f"predicted {EPOCHS}-epoch run: {run80 / 3600:.2f} h ({EPOCHS} loops, "
        f"{EPOCHS - ce_only} epochs with passes, 1 test pass)",
    ]
    if "logging" in r:
        lg = r["logging"]
        lines.append(f"per-step logging, before / after issue 12: {lg['before_s'] * 1e3:.1f} / "
                     f"{lg['after_s'] * 1e3:.1f} ms/step = {lg['ratio_before_over_after']:.3f}x")
    lines.append(f"(dataset generation + caches: {r['prepare_s']:.0f} s, not part of an epoch)")
    return "\n".join(lines)


def _data_name(s: dict) -> str:
    if s["real_data"]:
        return "SYSU-MM01 at " + s["data_root"]
    return f"{s['scale']}-scale synthetic SYSU-MM01"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--img-h", type=int, default=128)
    ap.add_argument("--img-w", type=int, default=64)
    ap.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="model.compile=true")
    ap.add_argument("--batches", type=int, default=8, help="timed batches per part")
    ap.add_argument("--workers", type=int, default=2, help="the N of the 0/1/N loader runs")
    ap.add_argument("--loader-batches", type=int, default=32,
                    help="timed batches of each loader-alone run (cheap: no model)")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--real-data", action="store_true", help="--data-root is a real SYSU-MM01")
    ap.add_argument("--scale", default="full", choices=["full", "small"],
                    help="synthetic scale (small: the demo's dataset, for dry runs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--num-ids", type=int, default=8, help="P")
    ap.add_argument("--num-pos", type=int, default=4, help="K")
    ap.add_argument("--compare-logging", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args)
    print(table(result), flush=True)
    if args.json:
        result["table"] = table(result)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
