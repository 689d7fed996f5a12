"""Resized uint8 image arrays: decoded once, stored as ``.npy``, memory-mapped afterwards.

Decoding ~34k JPEGs takes minutes and the SYSU training set is ~4 GB as uint8, so the arrays are
built once into a ``.npy`` file and every later run (and every DataLoader worker) maps that file
read-only: pages are shared by the OS instead of copied per process.

A manifest JSON beside the array (same name, ``.json`` suffix) records the format version, the
image size, the file list and a fingerprint of the sources (size + mtime of every file). The cache
is reused only when all of these match; otherwise it is rebuilt and the reason is logged. The
array is written to a temporary file and renamed into place, and the manifest is written last,
so an interrupted build never looks valid.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tskd.errors import DatasetError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Names used by the AGW/DDAG/CAJ code family for preprocessed SYSU training arrays.
STANDARD_FILES = {
    "visible": ("train_rgb_resized_img.npy", "train_rgb_resized_label.npy"),
    "infrared": ("train_ir_resized_img.npy", "train_ir_resized_label.npy"),
}


def load_image(path: str | os.PathLike, size: tuple[int, int] = (288, 144)) -> np.ndarray:
    """Decodes one image the standard way: RGB, PIL LANCZOS resize, no crop.

    Args:
        path: Image file (infrared images are converted to 3-channel RGB too).
        size: ``(height, width)`` of the result.

    Returns:
        uint8 array (height, width, 3).

    Raises:
        DatasetError: The file is missing, truncated or not an image.
    """
    h, w = size
    try:
        with Image.open(path) as img:
            # PIL sizes are (width, height).
            out = img.convert("RGB").resize((w, h), Image.LANCZOS)
        return np.asarray(out, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(
            f"cannot read image {path}: {err}. The file is missing or damaged; re-download the "
            "dataset or remove this file."
        ) from err


def fingerprint(paths: Sequence[str]) -> str:
    """Hash of (path, byte size, mtime_ns) of every source file: changes when any file does.

    Raises:
        DatasetError: A listed file does not exist.
    """
    digest = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as err:
            raise DatasetError(
                f"image {p} is listed but cannot be accessed ({err}); check dataset.root"
            ) from err
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def manifest_path(cache_file: str | os.PathLike) -> Path:
    """The manifest JSON that belongs to ``cache_file``."""
    return Path(cache_file).with_suffix(".json")


def _stale_reason(cache_file: Path, size: tuple[int, int], paths: list[str]) -> str | None:
    """Why the cache at ``cache_file`` cannot be reused, or None when it can."""
    mfile = manifest_path(cache_file)
    if not cache_file.exists():
        return "array missing"
    try:
        manifest = json.loads(mfile.read_text())
    except (OSError, ValueError):
        return "manifest missing or unreadable (an earlier build may have been interrupted)"
    if manifest.get("version") != FORMAT_VERSION:
        return f"format version changed ({manifest.get('version')} -> {FORMAT_VERSION})"
    if tuple(manifest.get("size", ())) != tuple(size):
        return f"size changed ({manifest.get('size')} -> {list(size)})"
    if manifest.get("files") != paths:
        return f"file list changed ({len(manifest.get('files', []))} -> {len(paths)} files)"
    if manifest.get("fingerprint") != fingerprint(paths):
        return "sources changed (a file's size or modification time differs)"
    try:
        arr = np.load(cache_file, mmap_mode="r")
    except (OSError, ValueError) as err:
        return f"array damaged ({err})"
    expected = (len(paths), size[0], size[1], 3)
    if arr.dtype != np.uint8 or arr.shape != expected:
        return f"array damaged (shape {arr.shape} {arr.dtype}, expected {expected} uint8)"
    return None


def _build(cache_file: Path, size: tuple[int, int], paths: list[str], desc: str,
           num_workers: int) -> None:
    """Decodes every image into a temp ``.npy`` and renames it to ``cache_file``."""
    tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.partial")
    mfile = manifest_path(cache_file)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # A manifest left from an older build must not vouch for a half-replaced array.
        mfile.unlink(missing_ok=True)
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size[0], size[1], 3)
        )
    except OSError as err:
        raise DatasetError(
            f"cannot write the image cache in {cache_file.parent} ({err}); set dataset.cache_dir "
            "to a writable folder"
        ) from err
    load = functools.partial(load_image, size=size)
    try:
        with tqdm(total=len(paths), desc=desc, unit="img", disable=None) as bar:
            if num_workers > 0:
                with Pool(num_workers) as pool:
                    # imap keeps the input order, so row i is always paths[i].
                    for i, img in enumerate(pool.imap(load, paths, chunksize=64)):
                        out[i] = img
                        bar.update()
            else:
                for i, p in enumerate(paths):
                    out[i] = load(p)
                    bar.update()
        out.flush()
        del out
        os.replace(tmp, cache_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    manifest = {"version": FORMAT_VERSION, "size": list(size), "count": len(paths),
                "fingerprint": fingerprint(paths), "files": paths}
    tmp_manifest = mfile.with_name(f"{mfile.name}.{os.getpid()}.partial")
    tmp_manifest.write_text(json.dumps(manifest))
    os.replace(tmp_manifest, mfile)


def cached_images(paths: Sequence[str | os.PathLike], cache_file: str | os.PathLike,
                  size: tuple[int, int], *, desc: str = "images",
                  num_workers: int = 0) -> np.ndarray:
    """Returns the images of ``paths`` as a read-only memory-mapped (N, h, w, 3) uint8 array.

    Args:
        paths: Image files; row i of the result is ``paths[i]``.
        cache_file: The ``.npy`` file to reuse or build.
        size: ``(height, width)`` of every image.
        desc: What is cached (e.g. ``"visible training images"``), for logs and the
            progress bar.
        num_workers: Decode processes while building (0: in this process).

    Raises:
        DatasetError: An image is unreadable, or the cache folder is not writable.
    """
    paths = [str(p) for p in paths]
    size = (int(size[0]), int(size[1]))
    if not paths:
        raise DatasetError(f"no {desc} to cache into {cache_file}; check dataset.root")
    cache_file = Path(cache_file)
    reason = _stale_reason(cache_file, size, paths)
    if reason is None:
        log.info("%s: reusing cache %s (%d images)", desc, cache_file, len(paths))
    else:
        log.info("%s: building cache %s (%d images): %s", desc, cache_file, len(paths), reason)
        _build(cache_file, size, paths, desc, num_workers)
    return np.load(cache_file, mmap_mode="r")


def standard_train_arrays(root: str | os.PathLike, size: tuple[int, int],
                          visible_labels: np.ndarray, infrared_labels: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray] | None:
    """Uses ``ROOT/train_{rgb,ir}_resized_{img,label}.npy`` from other codebases when they fit.

    They fit when each image array is (N, h, w, 3) uint8 with N equal to our list and the label
    array equals ours. The image arrays are memory-mapped, never loaded.

    Returns:
        ``(visible, infrared)`` memory-mapped arrays, or None (with the reason logged).
    """
    root = Path(root)
    arrays = []
    for modality, labels in (("visible", visible_labels), ("infrared", infrared_labels)):
        img_file, label_file = (root / name for name in STANDARD_FILES[modality])
        if not img_file.exists() or not label_file.exists():
            log.debug("no standard %s arrays in %s", modality, root)
            return None
        labels = np.asarray(labels, dtype=np.int64)
        expected = (len(labels), size[0], size[1], 3)
        try:
            img = np.load(img_file, mmap_mode="r")
            their = np.load(label_file)
        except (OSError, ValueError) as err:
            log.warning("ignoring %s: unreadable (%s)", img_file, err)
            return None
        if img.dtype != np.uint8 or img.shape != expected:
            log.warning("ignoring %s: shape %s %s, expected %s uint8 (dataset.img_h/img_w "
                        "or the image list differ)", img_file, img.shape, img.dtype, expected)
            return None
        if their.shape != labels.shape or not np.array_equal(their.astype(np.int64), labels):
            log.warning("ignoring %s: labels differ from this dataset's training list",
                        label_file)
            return None
        arrays.append(img)
    log.info("using standard preprocessed training arrays from %s", root)
    return arrays[0], arrays[1]
