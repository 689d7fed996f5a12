"""What proving the image cache's content costs when it is opened, against decoding the images.

    python benchmarks/cache_hash.py [--images 2000] [--workers 0]

Writes ``--images`` JPEG files of a person-crop size (textured, so they decode like photos),
builds the cache of them at 288x144 (``tskd.data.cache.cached_images``: decode, resize, write),
then times what every later open does before reusing it: the sources' fingerprint (size, mtime
and first and last 4 KiB of every file) and the array's content hash (best of three, the
in-process memo cleared each time). Prints each time and the ratio decode / check: how many
times cheaper the check is than the work it guards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """``n`` textured JPEGs of ``size`` (h, w): smooth colour fields plus fine noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
        noisy = np.clip(field + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        paths.append(str(path))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=0, help="decode processes (build)")
    parser.add_argument("--repeats", type=int, default=3, help="timings of the check")
    args = parser.parse_args(argv)

    from tskd.data import cache, cache_integrity

    size = (288, 144)
    with tempfile.TemporaryDirectory(prefix="tskd-cache-hash-") as tmp:
        paths = make_images(Path(tmp), args.images, (384, 160))
        cfile = Path(tmp) / "cache" / "images.npy"
        t0 = time.perf_counter()
        cache.cached_images(paths, cfile, size, num_workers=args.workers)
        build = time.perf_counter() - t0
        fp, digest = [], []
        for _ in range(args.repeats):
            cache_integrity._DIGESTS.clear()  # what a new process does
            t0 = time.perf_counter()
            cache.fingerprint(paths)
            fp.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cache.array_digest(cfile)
            digest.append(time.perf_counter() - t0)
        mb = cfile.stat().st_size / 1e6
    check = min(fp) + min(digest)
    print(f"{args.images} images, array {mb:.0f} MB, decode workers {args.workers}")
    print(f"build (decode, resize, write, hash): {build:8.3f} s")
    print(f"open check: fingerprint {min(fp):.3f} s + array hash {min(digest):.3f} s "
          f"= {check:.3f} s")
    print(f"ratio build / open check: {build / check:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
