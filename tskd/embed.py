"""Embed a folder of images with a trained model: ``python -m tskd.embed CKPT FOLDER``.

    python -m tskd.embed last.ckpt photos/ir --modality infrared --out ir_feats.npy

writes ``ir_feats.npy`` (float32 (N, C), L2-normalised rows) and ``ir_feats.json``, the index:
``files`` lists each image's path relative to FOLDER in row order (recursive, sorted), beside
the checkpoint, modality, feature and image size used. Cosine similarity of two rows is their
dot product. An existing output (either file) is never replaced unless ``--overwrite`` is given,
and both files are written under a temporary name and renamed into place, so a reader never
sees half a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from tskd.errors import TSKDError
from tskd.files import write_atomic
from tskd.inference import Embedder, list_images, parse_modality

log = logging.getLogger(__name__)


class OutputExistsError(TSKDError, FileExistsError):
    """An output file of ``python -m tskd.embed`` exists and ``--overwrite`` was not given."""


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """The ``(.npy, .json)`` files written for ``--out out``."""
    out = Path(out)
    if out.suffix != ".npy":  # np.save would append it; keep the .json beside the real name
        out = out.with_name(out.name + ".npy")
    return out, out.with_suffix(".json")


def embed_folder(ckpt: str | Path, folder: str | Path, modality: str | int,
                 out: str | Path = "features.npy", batch_size: int = 64, feature: str = "fc",
                 device: str = "cpu", extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png",
                                                                     ".bmp"),
                 overwrite: bool = False) -> tuple[Path, Path]:
    """Embed every image under ``folder``; returns the written ``(.npy, .json)`` paths.

    Raises:
        OutputExistsError: An output file exists and ``overwrite`` is false (nothing written).
        InputError: Unknown modality, not a folder, no images.
        DatasetError: An unreadable image.
        CheckpointError: A missing or unusable checkpoint.
    """
    out, index_file = output_paths(out)
    existing = [p for p in (out, index_file) if p.exists()]
    if existing and not overwrite:  # before any work: a typo in --out must not cost a run
        raise OutputExistsError(
            f"{' and '.join(map(str, existing))} already exist{'s' if len(existing) == 1 else ''};"
            " nothing was written. Choose another --out, or pass --overwrite to replace "
            f"{'it' if len(existing) == 1 else 'them'}.")
    m = parse_modality(modality)  # cheap checks first: nothing is loaded for a typo
    files = list_images(folder, extensions)
    embedder = Embedder.from_checkpoint(ckpt, device=device)
    feats = embedder.embed(files, m, batch_size=batch_size, feature=feature)  # (N, C)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda fh: np.save(fh, feats), fsync=True)
    index = {
        "checkpoint": str(ckpt), "folder": str(folder),
        "modality": {0: "visible", 1: "infrared"}[m], "feature": feature,
        "img_size": list(embedder.img_size), "shape": list(feats.shape),
        "files": [p.relative_to(folder).as_posix() for p in files],
    }
    write_atomic(index_file, lambda fh: fh.write(json.dumps(index, indent=1).encode()),
                 fsync=True)
    log.info("wrote %s %s and %s", out, feats.shape, index_file)
    return out, index_file


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 bad input)."""
    parser = argparse.ArgumentParser(prog="python -m tskd.embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="checkpoint written by train.py (checkpoints/last.ckpt)")
    parser.add_argument("folder", help="folder of images (searched recursively)")
    parser.add_argument("--modality", required=True,
                        help="visible | infrared (thermal): the camera type of ALL the images")
    parser.add_argument("--out", default="features.npy",
                        help="output .npy (the index is written beside it as .json)")
    parser.add_argument("--feature", default="fc", help="fc (reported feature) | pool")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--ext", nargs="+", default=[".jpg", ".jpeg", ".png", ".bmp"],
                        help="image file extensions to include")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the output files if they exist (refused otherwise)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out, index = embed_folder(args.ckpt, args.folder, args.modality, args.out,
                                  batch_size=args.batch_size, feature=args.feature,
                                  device=args.device, extensions=tuple(args.ext),
                                  overwrite=args.overwrite)
    except TSKDError as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    sys.stdout.write(f"{out}\n{index}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
