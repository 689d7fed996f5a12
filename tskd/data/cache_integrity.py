"""How the image cache proves its content: source fingerprints, array hashes, reserved space.

Split from :mod:`tskd.data.cache`, which decides when to reuse or build; these are the checks
it runs. A fingerprint reads each source file's first and last bytes besides its size and
mtime; an array hash reads the whole cached array. Both run whenever a cache is opened, which
``benchmarks/cache_hash.py`` compares with the decoding they guard.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tskd.core.errors import DatasetError

log = logging.getLogger(__name__)

SAMPLE_BYTES = 4096  # read from the start and the end of every source file by fingerprint()
HASH_BLOCK = 64 << 20  # array_digest() hashes blocks of this many bytes in parallel


def _sample(path: str, size: int) -> bytes:
    """The first and last :data:`SAMPLE_BYTES` of a file of ``size`` bytes."""
    with open(path, "rb") as fh:
        head = fh.read(SAMPLE_BYTES)
        if size <= 2 * SAMPLE_BYTES:
            return head + fh.read()
        fh.seek(size - SAMPLE_BYTES)
        return head + fh.read(SAMPLE_BYTES)


def fingerprint(paths: Sequence[str]) -> str:
    """Hash of every source file's path, size, mtime and first and last 4 KiB.

    The bytes make it change when a file is rewritten with its size and modification time
    put back (``cp -p``, ``rsync -a``, ``tar x``); a change confined to the middle of a file
    larger than 8 KiB that keeps both is not seen.

    Raises:
        DatasetError: A listed file does not exist or cannot be read.
    """
    digest = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            sample = _sample(p, st.st_size)
        except OSError as err:
            raise DatasetError(
                f"image {p} is listed but cannot be accessed ({err}); check dataset.root"
            ) from err
        digest.update(os.fsencode(p) + f"\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        digest.update(hashlib.sha256(sample).digest())
    return digest.hexdigest()


# path -> ((inode, size, mtime, ctime), digest): an array this process hashed already. ctime
# changes with any write and cannot be set back, so a changed file is always hashed again.
_DIGESTS: dict[str, tuple[tuple[int, int, int, int], str]] = {}


def array_digest(cache_file: str | os.PathLike) -> str:
    """SHA-256 of the SHA-256s of the array data's 64 MiB blocks (after the ``.npy`` header).

    The blocks are hashed in threads (hashlib releases the GIL), so a 4 GB array takes
    seconds; the result is remembered for the file as long as it is not changed.
    """
    path = os.path.realpath(cache_file)
    st = os.stat(path)
    key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    known = _DIGESTS.get(path)
    if known is not None and known[0] == key:
        return known[1]
    start = np.load(path, mmap_mode="r").offset  # where the data starts, after the header

    def block(offset: int) -> bytes:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return hashlib.sha256(fh.read(HASH_BLOCK)).digest()

    offsets = range(start, st.st_size, HASH_BLOCK)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digest = hashlib.sha256(b"".join(pool.map(block, offsets))).hexdigest()
    _DIGESTS[path] = (key, digest)
    return digest


def _human(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def reserve_space(tmp: Path, cache_file: Path) -> None:
    """Allocate the disk blocks of the (sparse) temporary array now, before any decoding.

    Writing through a memory map into a sparse file on a full disk kills the process with
    SIGBUS; with the blocks allocated up front a full disk is this error instead. Filesystems
    that cannot allocate ahead (and systems without posix_fallocate) skip the reservation.

    Raises:
        DatasetError: Not enough space (naming the sizes, the folder and the fix).
    """
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        return
    need = os.path.getsize(tmp)
    fd = os.open(tmp, os.O_RDWR)
    try:
        allocate(fd, 0, need)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            log.debug("cannot reserve space for %s (%s); writing without", tmp, err)
            return
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(tmp.parent).free
            raise DatasetError(
                f"not enough space for the image cache {cache_file}: it needs "
                f"{_human(need)} and {_human(free)} are free in {cache_file.parent} "
                f"({err.strerror}). Free space there, or set dataset.cache_dir to a folder on a "
                "disk with room."
            ) from err
        raise
    finally:
        os.close(fd)
