"""ONNX export of a trained model, one file per modality: ``python -m tskd.export CKPT --out DIR``.

The network picks its stem by modality, so each exported graph has the modality built in:
``<name>_visible.onnx`` for colour images and ``<name>_infrared.onnx`` for infrared ones.

- input ``images``: float32 (B, 3, H, W), RGB scaled to [0, 1] then ImageNet-normalised
  (mean 0.485 0.456 0.406, std 0.229 0.224 0.225), H x W the checkpoint's image size, B free;
- output ``embedding``: float32 (B, C), the L2-normalised "fc" feature, the same as
  :meth:`tskd.inference.Embedder.embed` gives (cosine similarity = dot product).

The graph records these facts in its metadata (``modality``, ``img_h``, ``img_w``, ``mean``,
``std``). ``--check`` runs each file with onnxruntime on random input and reports the largest
difference from PyTorch. onnx/onnxruntime are optional: ``pip install -e ".[extras]"``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tskd.checkpoint import build_module, load_checkpoint
from tskd.data.protocol import MODALITY_NAMES
from tskd.data.transforms import MEAN, STD
from tskd.errors import TSKDError
from tskd.inference import parse_modality

log = logging.getLogger(__name__)


def _require(name: str):
    """Import an optional dependency or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs the optional package {name!r}, which is not installed; run "
            '`pip install -e ".[extras]"` (or `pip install onnx onnxruntime`).'
        ) from err


class ModalityNet(nn.Module):
    """The retrieval network with its modality fixed: ``forward(images) -> embedding``."""

    def __init__(self, net: nn.Module, modality: int) -> None:
        super().__init__()
        self.net = net
        self.modality = int(modality)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images, self.modality)  # (B, C), L2-normalised


def _load(ckpt_path: str | Path) -> tuple[nn.Module, dict]:
    ckpt = load_checkpoint(ckpt_path)
    module = build_module(ckpt, ckpt_path, channels_last=False)
    return module.net.eval(), ckpt["tskd"]


def default_name(meta: dict) -> str:
    """``tskd_<dataset>[_t<split>]_<backbone>`` from a checkpoint's metadata."""
    split = f"_t{meta['trial']}" if meta["dataset"] == "regdb" and meta.get("trial") else ""
    return f"tskd_{meta['dataset']}{split}_{meta['backbone']}"


def export_onnx(ckpt_path: str | Path, out_dir: str | Path, opset: int = 17,
                name: str | None = None) -> dict[str, Path]:
    """Write ``<name>_visible.onnx`` and ``<name>_infrared.onnx`` (batch dimension dynamic).

    Args:
        ckpt_path: Checkpoint written by ``train.py``.
        out_dir: Folder for the files (created).
        opset: ONNX opset version.
        name: File name prefix (default :func:`default_name`).

    Returns:
        ``{"visible": path, "infrared": path}``.

    Raises:
        ImportError: onnx is not installed (the message says how to install it).
        CheckpointError: A missing or unusable checkpoint.
    """
    onnx = _require("onnx")
    net, meta = _load(ckpt_path)
    h, w = meta["img_size"]
    name = name or default_name(meta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for modality, mod_name in MODALITY_NAMES.items():
        path = out / f"{name}_{mod_name}.onnx"
        example = torch.zeros(2, 3, h, w)
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter: the torch.export one needs onnxscript, not a dependency.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                ModalityNet(net, modality), (example,), str(path), dynamo=False,
                input_names=["images"], output_names=["embedding"], opset_version=opset,
                dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
            )
        model = onnx.load(str(path))
        facts = {"modality": mod_name, "img_h": h, "img_w": w, "feature": "fc",
                 "mean": " ".join(map(str, MEAN)), "std": " ".join(map(str, STD)),
                 "dataset": meta["dataset"], "backbone": meta["backbone"]}
        onnx.helper.set_model_props(model, {k: str(v) for k, v in facts.items()})
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        written[mod_name] = path
        log.info("wrote %s (input (B, 3, %d, %d) %s images)", path, h, w, mod_name)
    return written


def check_onnx(onnx_path: str | Path, ckpt_path: str | Path, modality: str | int,
               batch_sizes: tuple[int, ...] = (1, 3), seed: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| over random inputs of each batch size.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    ort = _require("onnxruntime")
    m = parse_modality(modality)
    net, meta = _load(ckpt_path)
    h, w = meta["img_size"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batch_sizes:
        x = torch.randn(b, 3, h, w, generator=g)  # roughly the range of normalised images
        with torch.no_grad():
            ref = net(x, m).numpy()  # (b, C)
        got = session.run(["embedding"], {"images": x.numpy()})[0]
        if got.shape != ref.shape:
            raise RuntimeError(f"{onnx_path} returned shape {got.shape} for a batch of {b}, "
                               f"expected {ref.shape}; re-export it with this tskd version.")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tskd.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="checkpoint written by train.py")
    parser.add_argument("--out", default="onnx", help="output folder (default ./onnx)")
    parser.add_argument("--name", default=None, help="file name prefix")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--check", action="store_true",
                        help="compare onnxruntime with PyTorch on random input (tolerance 1e-4)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = export_onnx(args.ckpt, args.out, opset=args.opset, name=args.name)
        failed = False
        for modality, path in written.items():
            sys.stdout.write(f"{path}\n")
            if args.check:
                diff = check_onnx(path, args.ckpt, modality)
                failed |= diff > 1e-4
                sys.stdout.write(f"  {modality}: max |onnxruntime - torch| = {diff:.2e}\n")
    except (TSKDError, ImportError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
