"""Embed a folder of images with a trained model: ``python -m tskd.apps.embed CKPT FOLDER``.

    python -m tskd.apps.embed last.ckpt photos/ir --modality infrared --out ir_feats.npy

writes ``ir_feats.npy`` (float32 (N, C), L2-normalised rows) and ``ir_feats.json``, the index:
``files`` lists each image's path relative to FOLDER in row order (recursive, sorted), beside
the checkpoint, modality, feature and image size used. Cosine similarity of two rows is their
dot product. ``--out`` naming an existing folder (or ending in ``/``) writes
``features.npy`` and ``features.json`` inside it.

An existing output (either file) is never replaced unless ``--overwrite`` is given. Both files
are written in full under temporary names first, then renamed into place together: a failure
(a full disk, Ctrl-C) before or between the renames leaves the earlier pair as it was, so the
features and their index always belong together. Features holding NaN/Inf (a checkpoint saved
after training diverged) are refused, naming the checkpoint; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from tskd.core.errors import OutputError, OutputExistsError, TSKDError
from tskd.core.files import folder_problem, refuse_existing, replace_together, write_temporary
from tskd.features.images import Embedder, list_images, parse_modality

log = logging.getLogger(__name__)

__all__ = ["OutputExistsError", "embed_folder", "main", "output_paths"]
DEFAULT_NAME = "features.npy"  # the file written inside a folder named by --out


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """The ``(.npy, .json)`` files written for ``--out out``.

    An existing folder, or a name ending in a path separator, holds ``features.npy`` and
    ``features.json``; any other name gets ``.npy`` appended unless it has it.
    """
    text = os.fspath(out)
    if os.path.isdir(text) or text.endswith(("/", os.sep)):
        return Path(text) / DEFAULT_NAME, Path(text) / "features.json"
    out = Path(text)
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
        OutputError: The output folder cannot be written, or writing failed (a full disk): the
            earlier files, if any, are unchanged.
        InputError: Unknown modality, not a folder, no images.
        DatasetError: An unreadable image.
        CheckpointError: A missing or unusable checkpoint, or one giving NaN/Inf features.
    """
    out, index_file = output_paths(out)
    if not overwrite:  # before any work: a typo in --out must not cost a run
        refuse_existing([out, index_file],
                        "Choose another --out, or pass --overwrite to replace {it}.")
    m = parse_modality(modality)  # cheap checks first: nothing is loaded for a typo
    files = list_images(folder, extensions)
    why = folder_problem(out.parent)
    if why is not None:
        raise OutputError(f"cannot write {out} ({out.parent}: {why}); choose another --out.")
    embedder = Embedder.from_checkpoint(ckpt, device=device)
    feats = embedder.embed(files, m, batch_size=batch_size, feature=feature)  # (N, C)
    index = {
        "checkpoint": str(ckpt), "folder": str(folder),
        "modality": {0: "visible", 1: "infrared"}[m], "feature": feature,
        "img_size": list(embedder.img_size), "shape": list(feats.shape),
        "files": [p.relative_to(folder).as_posix() for p in files],
    }
    _write_pair(out, feats, index_file, index)
    log.info("wrote %s %s and %s", out, feats.shape, index_file)
    return out, index_file


def _write_pair(out: Path, feats: np.ndarray, index_file: Path, index: dict) -> None:
    """Both files in full under temporary names, then renamed into place together."""
    had = [p for p in (out, index_file) if p.exists()]
    temps: list[Path] = []
    try:
        temps.append(write_temporary(out, lambda fh: np.save(fh, feats), fsync=True))
        temps.append(write_temporary(
            index_file, lambda fh: fh.write(json.dumps(index, indent=1).encode()), fsync=True))
        replace_together([(temps[0], out), (temps[1], index_file)])
    except BaseException as err:  # Ctrl-C included: no temporary stays behind
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
        left = (f"{' and '.join(map(str, had))} {'are' if len(had) > 1 else 'is'} unchanged"
                if had else "nothing was written")
        raise OutputError(f"cannot write {out} and {index_file} ({err.strerror or err}); "
                          f"{left}. Free space on that disk or choose another --out.") from err


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 bad input)."""
    parser = argparse.ArgumentParser(prog="python -m tskd.apps.embed", description=__doc__,
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
        done = "" if isinstance(err, OutputError) else " Nothing was written."
        sys.stderr.write(f"error: {err}{done}\n")
        return 1
    sys.stdout.write(f"{out}\n{index}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
