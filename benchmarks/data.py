"""Peak memory of the training data path: memory-mapped cache vs arrays loaded into RAM.

    python benchmarks/data.py [--ids 200] [--batches 50] [--workers 0]

Makes a synthetic SYSU-layout dataset at the standard 288x144 size, builds the datamodule's
caches, then measures, each in a fresh process, the peak proportional set size (PSS: shared
pages split between the processes sharing them, so the sum over the main process and its loader
workers is the memory really used), sampled after every batch: in total, and its anonymous part
(heap, tensors, arrays read into RAM -- memory the kernel cannot drop; the pages a memory map
touches are page cache instead, reclaimable under pressure). Modes:
- ``mmap``: the datamodule as shipped, iterating ``--batches`` training batches;
- ``in-memory``: the same loader over the same arrays first read fully into RAM with
  ``np.load`` (what the standard code does with ``train_*_resized_img.npy``).
Prints both peaks and their ratio (in-memory / mmap); the saving grows with the dataset (real
SYSU-MM01 arrays are ~4.6 GB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _pss_kib(pid: str = "self") -> tuple[int, int]:
    """(Pss, Pss_Anon) of a process: shared pages split between the processes sharing them."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:  # a worker that already exited
        return 0, 0
    fields = {ln.split(":")[0]: int(ln.split()[1]) for ln in lines if ln.endswith("kB")}
    return fields.get("Pss", 0), fields.get("Pss_Anon", 0)


def _datamodule(root: Path, workers: int):
    from tskd.config import DataConfig, DatasetConfig, yaml_values
    from tskd.core.schema import build
    from tskd.data.datamodule import ReIDDataModule

    dataset = build(DatasetConfig, {**yaml_values("dataset/sysu.yaml"), "root": str(root)})
    data = build(DataConfig, {**yaml_values("train.yaml", "data"), "num_workers": workers,
                              "num_ids": 8, "num_pos": 4})
    return ReIDDataModule(dataset, data, mode="all", seed=0)


def measure(root: Path, mode: str, batches: int, workers: int) -> dict:
    """Run in a child process: iterate ``batches`` batches, report peak memory in MiB."""
    import numpy as np

    dm = _datamodule(root, workers)
    dm.setup("fit")
    if mode == "in-memory":
        dm.visible_images = np.array(dm.visible_images)  # full copies in RAM
        dm.infrared_images = np.array(dm.infrared_images)
    loader = dm.train_dataloader()
    it = iter(loader)
    pids = ["self"] + [str(w.pid) for w in getattr(it, "_workers", [])]
    peak_pss = peak_anon = 0  # sampled after every batch, summed over processes
    for i in range(batches):
        try:
            next(it)
        except StopIteration:
            loader.batch_sampler.set_epoch(i)
            it = iter(loader)
            pids = ["self"] + [str(w.pid) for w in getattr(it, "_workers", [])]
            next(it)
        pss = [_pss_kib(p) for p in pids]
        peak_pss = max(peak_pss, sum(p[0] for p in pss))
        peak_anon = max(peak_anon, sum(p[1] for p in pss))
    del it
    arrays_mib = (dm.visible_images.nbytes + dm.infrared_images.nbytes) / 2**20
    return {"mode": mode, "peak_anon_mib": peak_anon / 1024, "peak_pss_mib": peak_pss / 1024,
            "arrays_mib": arrays_mib}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=300, help="synthetic training identities")
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--root", type=Path, default=None, help="reuse a dataset folder")
    ap.add_argument("--child", choices=["mmap", "in-memory"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.root, args.child, args.batches, args.workers)))
        return
    from tskd.data.synthetic import make_sysu

    tmp = tempfile.TemporaryDirectory()
    root = args.root or Path(tmp.name) / "sysu"
    if not (root / "exp").is_dir():
        make_sysu(root, seed=0, num_train=args.ids, num_val=8, num_test=8, images_per_cam=6)
    _datamodule(root, 0).prepare_data()  # build caches once, outside the measured processes
    results = {}
    for mode in ("mmap", "in-memory"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--root", str(root),
             "--batches", str(args.batches), "--workers", str(args.workers)],
            capture_output=True, text=True, check=True,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    for mode, r in results.items():
        print(f"{mode:>10}: peak anonymous memory {r['peak_anon_mib']:8.1f} MiB, peak total "
              f"{r['peak_pss_mib']:8.1f} MiB (training arrays {r['arrays_mib']:.1f} MiB)")
    for key, what in (("peak_anon_mib", "anonymous memory"), ("peak_pss_mib", "total memory")):
        ratio = results["in-memory"][key] / results["mmap"][key]
        print(f"in-memory / mmap peak {what}: {ratio:.2f}x "
              f"({args.batches} batches, {args.workers} workers)")


if __name__ == "__main__":
    main()
