"""Resized uint8 image arrays: decoded once, stored as ``.npy``, memory-mapped afterwards.

Decoding ~34k JPEGs takes minutes and the SYSU training set is ~4 GB as uint8, so the arrays are
built once into a ``.npy`` file and every later run (and every DataLoader worker) maps that file
read-only: pages are shared by the OS instead of copied per process.

A manifest JSON beside the array (same name, ``.json`` suffix) records the format version, the
image size, the file list, a fingerprint of the sources (:func:`fingerprint`: size, mtime and the
first and last 4 KiB of every file, so a file rewritten with its mtime put back -- ``cp -p``,
``rsync -a``, ``tar x`` -- is seen) and a hash of the array's content (:func:`array_digest`),
checked whenever the cache is opened, so an array changed on disk is never used. The cache is
reused only when all of these match; otherwise it is rebuilt and the reason is logged. Hashing
reads the array once (its 64 MiB blocks in parallel threads), far less work than decoding the
images (``benchmarks/cache_hash.py`` measures the ratio); within one process an array is hashed
once. The array is written to a temporary file and renamed into place, and the manifest is
written last, so an interrupted build never looks valid. A build removes its own temporaries
when it fails, and the temporaries that killed builds of the same cache left behind when it
starts (see :func:`remove_stale_temporaries`).

Before decoding, a build checks that every file name is UTF-8 and reserves the array's space
on disk (``posix_fallocate``): a full disk is an error naming the folder, not a SIGBUS while the
memory map is written.

Images with 16-bit (or wider integer) samples, such as radiometric thermal PNG/TIFF frames, are
scaled to 8 bits by their range instead of being clipped to white (see :func:`to_rgb`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Sequence
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tskd.core.errors import DatasetError
from tskd.data.cache_integrity import array_digest, fingerprint, reserve_space
from tskd.data.layout import require_utf8_name

log = logging.getLogger(__name__)

# 2: the manifest holds the array's hash, the fingerprint each file's first and last bytes.
FORMAT_VERSION = 2

# Names used by the AGW/DDAG/CAJ code family for preprocessed SYSU training arrays.
STANDARD_FILES = {
    "visible": ("train_rgb_resized_img.npy", "train_rgb_resized_label.npy"),
    "infrared": ("train_ir_resized_img.npy", "train_ir_resized_label.npy"),
}


def _high_depth_to_8bit(img: Image.Image) -> Image.Image:
    """A 16/32-bit integer greyscale image scaled to 8 bits (mode ``L``) by its real range.

    PIL's own ``convert`` clips such values at 255, so a 16-bit thermal frame turns almost
    entirely white. Scaling keeps what the sensor recorded:

    * ``I;16*`` modes hold 16-bit samples: full scale is 65535, i.e. divide by 257. The file's
      container depth is used (not each image's maximum) so every frame of one camera maps the
      same way and brightness stays comparable between images of one identity.
    * Mode ``I`` (32-bit signed) is only a container: Pillow uses it for 32-bit TIFFs and
      for formats that widen 16-bit data, and full 32-bit scale would make real images black.
      So the depth is the smallest of 8 or 16 bits that holds the image's maximum (then the
      bits actually used, above 16). Negative values have no meaning for intensities and are
      clipped to 0.
    """
    data = np.asarray(img).astype(np.int64)
    if img.mode == "I":
        data = np.clip(data, 0, None)
        top = int(data.max()) if data.size else 0
        bits = 8 if top < 1 << 8 else 16 if top < 1 << 16 else top.bit_length()
    else:
        bits = 16
    full = (1 << bits) - 1
    # Integer rounding: exact for every input (e.g. 257 * k -> k for 16-bit data).
    scaled = (data * 255 + full // 2) // full
    return Image.fromarray(scaled.astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB image; 16/32-bit greyscale is scaled, not clipped.

    Args:
        img: Any PIL image (RGB, greyscale, palette, 16-bit thermal, ...).

    Returns:
        A mode ``RGB`` image of the same size.
    """
    if img.mode == "I" or img.mode.startswith("I;16"):
        img = _high_depth_to_8bit(img)
    return img.convert("RGB")


def load_image(path: str | os.PathLike, size: tuple[int, int] = (288, 144)) -> np.ndarray:
    """Decodes one image the standard way: RGB, PIL LANCZOS resize, no crop.

    Args:
        path: Image file (infrared images are converted to 3-channel RGB too; 16-bit images
            are scaled to 8 bits by :func:`to_rgb`).
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
            out = to_rgb(img).resize((w, h), Image.LANCZOS)
        return np.asarray(out, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(
            f"cannot read image {path}: {err}. The file is missing or damaged; re-download the "
            "dataset or remove this file."
        ) from err


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
        return "sources changed (a file's size, modification time or bytes differ)"
    try:
        arr = np.load(cache_file, mmap_mode="r")
    except (OSError, ValueError) as err:
        return f"array damaged ({err})"
    expected = (len(paths), size[0], size[1], 3)
    if arr.dtype != np.uint8 or arr.shape != expected:
        return f"array damaged (shape {arr.shape} {arr.dtype}, expected {expected} uint8)"
    try:
        if manifest.get("array_sha256") != array_digest(cache_file):
            return "array content changed since it was built (its hash differs)"
    except (OSError, ValueError) as err:
        return f"array damaged ({err})"
    return None


# Temporaries are named <target>.<host>.<pid>.<random>.partial: unique per build even when two
# processes (or two calls in one process) build the same cache at once, and self-describing
# enough for a later build to tell whether the builder that left one behind is gone.
_TEMP = r"\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{16}\.partial"
# Names written by format-1 code before this scheme (<target>.<pid>.partial, no host).
_OLD_TEMP = r"\.(?P<pid>\d+)\.partial"
STALE_TEMP_AGE_S = 24 * 3600


def _host() -> str:
    """This machine's name, reduced to the characters allowed in a temporary's name.

    Not shortened: two machines whose names share a prefix must not look like one (host names
    are at most 64 characters, which leaves a file name well under 255).
    """
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _temp_path(target: Path) -> Path:
    """A fresh temporary beside ``target`` that no other build uses."""
    return target.with_name(
        f"{target.name}.{_host()}.{os.getpid()}.{secrets.token_hex(8)}.partial"
    )


def _process_gone(pid: int) -> bool:
    """True only when no process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence check, nothing is delivered
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # PermissionError: it exists but belongs to another user
        return False
    return False


def _discard(path: Path) -> None:
    """Removes ``path`` if present; a failure only leaves it for a later build's cleanup."""
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not remove temporary %s (%s)", path, err)


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Removes temporaries of ``target`` left by builds that were killed.

    Only names of this module's own pattern for exactly this target are considered, so a build
    never touches the files of another cache. A temporary is stale when

    * its builder ran on this machine (same host name in the file name) and that process no
      longer exists, or
    * it has not been modified for ``STALE_TEMP_AGE_S`` (24 h). This covers builders on other
      machines sharing the folder (their process ids mean nothing here), reused process ids and
      temporaries from older versions. A live build writes its temporary continuously and takes
      minutes, so a day without a write means its builder is dead.

    A temporary of a live build (even of the same target) is therefore never removed, provided
    that machines sharing the cache folder have distinct host names (containers that share a
    folder and a host name but not their process ids would look like one machine).

    Args:
        target: The cache or manifest file whose temporaries are checked.

    Returns:
        The removed paths.
    """
    target = Path(target)
    patterns = [re.compile(re.escape(target.name) + p) for p in (_TEMP, _OLD_TEMP)]
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    host, now, removed = _host(), time.time(), []
    for entry in entries:
        match = next((m for p in patterns if (m := p.fullmatch(entry.name))), None)
        if match is None:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:  # removed meanwhile by another build's cleanup
            continue
        owner_host = match.groupdict().get("host")
        if age > STALE_TEMP_AGE_S or (
            owner_host == host and _process_gone(int(match.group("pid")))
        ):
            path = Path(entry.path)
            _discard(path)
            if not path.exists():
                log.info("removed temporary %s left by an interrupted cache build", path)
                removed.append(path)
    return removed


def _build(cache_file: Path, size: tuple[int, int], paths: list[str], desc: str,
           num_workers: int) -> None:
    """Decodes every image into a temp ``.npy`` and renames it to ``cache_file``.

    Two builders of the same cache never share a temporary and each rename is atomic, so the
    last one to finish wins with a complete array and the manifest that describes it.
    """
    mfile = manifest_path(cache_file)
    tmp, tmp_manifest = _temp_path(cache_file), _temp_path(mfile)
    unwritable = (f"cannot write the image cache in {cache_file.parent} ({{}}); set "
                  "dataset.cache_dir to a writable folder with enough space")
    try:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(cache_file)
            remove_stale_temporaries(mfile)
            # A manifest left from an older build must not vouch for a half-replaced array.
            mfile.unlink(missing_ok=True)
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size[0], size[1], 3)
            )
            reserve_space(tmp, cache_file)
        except OSError as err:
            raise DatasetError(unwritable.format(err)) from err
        load = functools.partial(load_image, size=size)
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
        manifest = {"version": FORMAT_VERSION, "size": list(size), "count": len(paths),
                    "fingerprint": fingerprint(paths), "array_sha256": array_digest(tmp),
                    "files": paths}
        try:
            os.replace(tmp, cache_file)
            tmp_manifest.write_text(json.dumps(manifest))
            os.replace(tmp_manifest, mfile)
        except OSError as err:
            raise DatasetError(unwritable.format(err)) from err
    finally:
        # Whatever stopped the build (error, Ctrl-C), its own temporaries go; after the renames
        # these are no-ops. A kill -9 skips this: the next build's cleanup handles that.
        _discard(tmp)
        _discard(tmp_manifest)


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
    for p in paths:  # before any decoding: the manifest stores the names as UTF-8
        require_utf8_name(p)
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
