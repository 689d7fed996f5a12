"""ONNX export of a trained model, one file per modality:
``python -m tskd.apps.export CKPT --out DIR``.

The network picks its stem by modality, so each exported graph has the modality built in:
``<name>_visible.onnx`` for colour images and ``<name>_infrared.onnx`` for infrared ones.

- input ``images``: float32 (B, 3, H, W), RGB scaled to [0, 1] then ImageNet-normalised
  (mean 0.485 0.456 0.406, std 0.229 0.224 0.225), H x W the checkpoint's image size, B free;
- output ``embedding``: float32 (B, C), the L2-normalised "fc" feature, the same as
  :meth:`tskd.features.images.Embedder.embed` gives (cosine similarity = dot product).

The graph records these facts in its metadata (``modality``, ``img_h``, ``img_w``, ``mean``,
``std``). ``--check`` runs each file with onnxruntime on random input and reports the largest
difference from PyTorch; an output holding NaN/Inf fails it. onnx/onnxruntime are optional:
``pip install -e ".[extras]"``.

Existing files are never replaced unless ``--overwrite`` is given. Both graphs are written into
a temporary folder inside ``--out`` and then renamed into place together, so an export that
fails half-way (a full disk) leaves the earlier files as they were. A checkpoint whose weights
hold NaN/Inf is refused before anything is written.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tskd.checkpoints.loading import build_module, load_checkpoint
from tskd.core.errors import CheckpointError, InputError, OutputError, TSKDError
from tskd.core.files import folder_problem, refuse_existing, replace_together
from tskd.core.finite import nonfinite_message
from tskd.data.protocol import MODALITY_NAMES
from tskd.data.transforms import MEAN, STD
from tskd.features.images import parse_modality

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # --check: largest |onnxruntime - PyTorch| accepted


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
    bad = nonfinite_message(ckpt_path, ckpt["state_dict"])
    if bad:  # every output would be NaN, and NaN passes any "difference <= tolerance" test
        raise CheckpointError(f"nothing was exported: {bad}.")
    module = build_module(ckpt, ckpt_path, channels_last=False)
    return module.net.eval(), ckpt["tskd"]


def opset_range() -> tuple[int, int]:
    """The ONNX opsets this torch's exporter accepts (its own constants; 7..20 if unknown)."""
    try:
        from torch.onnx import _constants
        return int(_constants.ONNX_MIN_OPSET), int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        return 7, 20


def _check_opset(opset) -> int:
    lo, hi = opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not lo <= opset <= hi:
        raise InputError(f"--opset {opset} cannot be exported by torch {torch.__version__}, "
                         f"which writes opsets {lo}..{hi}; use the default 17 (onnxruntime "
                         "1.16 and newer run it).")
    return opset


def default_name(meta: dict) -> str:
    """``tskd_<dataset>[_t<split>]_<backbone>`` from a checkpoint's metadata."""
    split = f"_t{meta['trial']}" if meta["dataset"] == "regdb" and meta.get("trial") else ""
    return f"tskd_{meta['dataset']}{split}_{meta['backbone']}"


def export_onnx(ckpt_path: str | Path, out_dir: str | Path, opset: int = 17,
                name: str | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write ``<name>_visible.onnx`` and ``<name>_infrared.onnx`` (batch dimension dynamic).

    Args:
        ckpt_path: Checkpoint written by ``train.py``.
        out_dir: Folder for the files (created).
        opset: ONNX opset version.
        name: File name prefix (default :func:`default_name`).
        overwrite: Replace files of the same names (refused otherwise, before any work).

    Returns:
        ``{"visible": path, "infrared": path}``.

    Raises:
        ImportError: onnx is not installed (the message says how to install it).
        InputError: An opset this torch cannot export.
        OutputError: ``out_dir`` is a file or cannot be written, the disk filled up (the files
            there are unchanged), or (:class:`~tskd.core.errors.OutputExistsError`) a file exists
            and ``overwrite`` is false.
        CheckpointError: A missing or unusable checkpoint, or one whose weights are not finite.
    """
    opset = _check_opset(opset)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; pass a folder for the .onnx files (it is "
                          "created when missing).")
    onnx = _require("onnx")
    net, meta = _load(ckpt_path)
    h, w = meta["img_size"]
    name = name or default_name(meta)
    paths = {mod_name: out / f"{name}_{mod_name}.onnx" for mod_name in MODALITY_NAMES.values()}
    if not overwrite:
        refuse_existing(list(paths.values()),
                        "Choose another --out or --name, or pass --overwrite to replace {it}.")
    why = folder_problem(out)
    if why is not None:
        raise OutputError(f"cannot write the ONNX files into {out} ({why}); choose another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".tskd-export-"))
    except OSError as err:
        raise OutputError(f"cannot write the ONNX files into {out} ({err}); choose another "
                          "--out.") from err
    try:
        for modality, mod_name in MODALITY_NAMES.items():
            _export_one(onnx, ModalityNet(net, modality), staging / paths[mod_name].name,
                        opset, (h, w), {"modality": mod_name, "dataset": meta["dataset"],
                                        "backbone": meta["backbone"]})
        replace_together([(staging / p.name, p) for p in paths.values()])
    except OSError as err:
        raise OutputError(
            f"cannot write the ONNX files into {out} ({err.strerror or err}); the files there "
            "are unchanged. Free space on that disk or choose another --out.") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for mod_name, path in paths.items():
        log.info("wrote %s (input (B, 3, %d, %d) %s images)", path, h, w, mod_name)
    return paths


def _export_one(onnx, model: nn.Module, path: Path, opset: int, size: tuple[int, int],
                facts: dict) -> None:
    """One graph to ``path``, with the image facts in its metadata."""
    h, w = size
    example = torch.zeros(2, 3, h, w)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter: the torch.export one needs onnxscript, not a dependency.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (example,), str(path), dynamo=False,
                input_names=["images"], output_names=["embedding"], opset_version=opset,
                dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
            )
    except torch.onnx.OnnxExporterError as err:  # an operation the opset lacks
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot export with --opset {opset}: {first}; use the default "
                         "17.") from err
    graph = onnx.load(str(path))
    facts = {**facts, "img_h": h, "img_w": w, "feature": "fc",
             "mean": " ".join(map(str, MEAN)), "std": " ".join(map(str, STD))}
    onnx.helper.set_model_props(graph, {k: str(v) for k, v in facts.items()})
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def check_onnx(onnx_path: str | Path, ckpt_path: str | Path, modality: str | int,
               batch_sizes: tuple[int, ...] = (1, 3), seed: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| over random inputs of each batch size.

    An onnxruntime output holding NaN/Inf is an infinite difference (``math.inf``), never a
    small one.

    Raises:
        ImportError: onnxruntime is not installed.
        CheckpointError: The checkpoint's weights, or PyTorch's outputs, are not finite.
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
        if not np.isfinite(ref).all():  # finite weights (checked by _load), non-finite output
            raise CheckpointError(f"checkpoint {ckpt_path} gives NaN/Inf embeddings for random "
                                  "input in PyTorch; it cannot be checked or used.")
        if not np.isfinite(got).all():  # max() would skip a NaN: max(0.0, nan) == 0.0
            return math.inf
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tskd.apps.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="checkpoint written by train.py")
    parser.add_argument("--out", default="onnx", help="output folder (default ./onnx)")
    parser.add_argument("--name", default=None, help="file name prefix")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--check", action="store_true",
                        help="compare onnxruntime with PyTorch on random input (tolerance 1e-4)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing files of the same names (refused otherwise)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = export_onnx(args.ckpt, args.out, opset=args.opset, name=args.name,
                              overwrite=args.overwrite)
        failed = False
        for modality, path in written.items():
            sys.stdout.write(f"{path}\n")
            if args.check:
                diff = check_onnx(path, args.ckpt, modality)
                sys.stdout.write(f"  {modality}: max |onnxruntime - torch| = {diff:.2e}\n")
                if not diff <= TOLERANCE:
                    failed = True
                    why = " (its output holds NaN/Inf)" if math.isinf(diff) else ""
                    sys.stderr.write(f"error: {path} fails the check{why}: max |onnxruntime - "
                                     f"torch| = {diff:.2e} > {TOLERANCE:.0e}\n")
    except (TSKDError, ImportError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
