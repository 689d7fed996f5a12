"""A small procedural visible/infrared person dataset in the real SYSU-MM01/RegDB/LLCM layouts.

Why it exists: the real datasets need a licence and gigabytes, but the loading code, the test
protocol, training and evaluation should run end to end on any machine (CI, a laptop, the demo
``python train.py experiment=synthetic``). The folders use exactly the real layouts, so
``tskd.data.sysu`` / ``tskd.data.regdb`` / ``tskd.data.llcm`` read them unchanged, and a model
can genuinely learn on them: each identity is a person-like figure whose identity lives in
geometry and pattern (height, head size, hair length, shoulder/waist width, sleeve length, torso
pattern type and stripe count, bag and its side, trousers/shorts/striped legs), shared by both
renderings. Visible images use identity-specific, moderately saturated clothing hues (whose
luminance follows the infrared material, so the modalities can be tied together quickly) under a
fixed per-camera tint/gain and per-image illumination jitter. Infrared images are single-intensity
(stored as RGB, R=G=B): each part's intensity is its "material" (skin warm, hair and bags cool,
clothing a per-identity value), not the grey of the visible colours, blurred like a thermal
sensor. Per image: random translation, scale, leg stance, background clutter and noise.

All randomness comes from ``numpy.random.default_rng(seed)``: same arguments, identical files.
Defaults: about 1,300 SYSU, 480 RegDB or 550 LLCM images in a few seconds. The marker file
``.tskd_synthetic.json`` records the parameters; :func:`ensure_synthetic` regenerates on change.
Generation holds an exclusive lock on ``.tskd_synthetic.lock`` in the folder, so concurrent
runs (DDP ranks, two jobs started together) never delete a tree another one is writing.

``ensure_synthetic(root, "sysu", scale="full")`` writes a SYSU-MM01 at the real dataset's scale
instead (:func:`make_sysu_full`: 395 training + 96 test ids, 22,258 visible + 11,909 infrared
training images, 3,803 queries), so the cost of an epoch can be measured without the licensed
data. Its images are 64x32 by default (the cache resizes them to the model's size): about 45,000
small JPEGs, ~100 MB, written in a couple of minutes on one core.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tskd.core.errors import DatasetError

try:  # POSIX; the lock is released by the OS when its holder exits, even when killed
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

log = logging.getLogger(__name__)

MARKER = ".tskd_synthetic.json"
LOCK = ".tskd_synthetic.lock"
_VERSION = 5
_LAYOUT_DIRS = {"sysu": tuple(f"cam{c}" for c in range(1, 7)) + ("exp",),
                "regdb": ("Visible", "Thermal", "idx"),
                "llcm": ("idx", "test_vis", "test_nir", "train_vis", "train_nir")}
_LLCM_VIS_CAMS = tuple(range(1, 10))
_LLCM_NIR_CAMS = (1, 2, 4, 5, 6, 7, 8, 9)  # as the real test set: no infrared camera 3
# Part labels of the figure map: 0 background, 1 skin, 2 hair, 3 upper clothing,
# 4 upper pattern, 5 lower clothing, 6 lower texture, 7 bag, 8 shoes.


_LUMA = np.array([0.299, 0.587, 0.114])
_CHROMA = 0.35  # share of a garment colour's saturation kept (see _identity)


def _identity(rng: np.random.Generator) -> dict:
    """Attributes of one identity: geometry (both modalities), colours (visible), materials (IR)."""
    colours = rng.uniform(0.05, 0.95, (9, 3))  # (part, RGB)
    tone = rng.uniform(0.45, 0.9)
    colours[1] = (tone, tone * 0.8, tone * 0.65)
    colours[2] = rng.uniform(0.05, 0.35) * np.array([1.0, 0.8, 0.6])
    colours[4] = (colours[3] + 0.5) % 1.0  # pattern contrasts with the garment it is on
    colours[6] = (colours[5] + 0.5) % 1.0
    # Infrared "materials": skin warm, hair and bags cool, clothing per identity.
    low, high = np.array([[0, 0.8, 0.3, 0.25, 0, 0.25, 0, 0.08, 0.15],
                          [0, 0.95, 0.45, 0.7, 0, 0.7, 0, 0.3, 0.35]])
    mats = rng.uniform(low, high)
    # Patterns differ from their garment by a clear step so they stay visible in infrared.
    for part, base in ((4, 3), (6, 5)):
        step = rng.uniform(0.2, 0.3)
        mats[part] = mats[base] + step if mats[base] < 0.5 else mats[base] - step
    # In real data a garment's visible brightness and infrared intensity are only loosely tied;
    # here the visible luminance of clothing follows its infrared material closely, and its
    # colour keeps only part (_CHROMA) of its saturation, so any single channel (what the
    # channel-exchange view keeps) is close to that luminance. A network can then tie the two
    # modalities together within a few CPU minutes instead of leaning on hue, which infrared
    # lacks (full saturation: demo rank-1 8.4% instead of 12.8%, same 10 epochs).
    for part in (3, 4, 5, 6):
        lum = float(colours[part] @ _LUMA)
        target = 0.9 * mats[part] / 0.95 + 0.1 * lum
        colours[part] = np.clip(target + _CHROMA * (colours[part] - lum), 0.02, 1.0)
    return {
        "height": rng.uniform(0.78, 0.94), "head": rng.uniform(0.055, 0.08),
        "hair": rng.uniform(0.5, 1.3), "shoulder": rng.uniform(0.11, 0.17),
        "waist": rng.uniform(0.08, 0.12), "torso": rng.uniform(0.28, 0.38),
        "sleeve": rng.uniform(0.25, 1.0), "pattern": int(rng.integers(5)),
        "stripes": int(rng.integers(2, 6)), "bag": int(rng.integers(3)),
        "legs": int(rng.integers(3)), "colours": colours, "materials": mats,
    }


def _figure(ident: dict, rng: np.random.Generator, h: int, w: int) -> tuple:
    """Part-label map (h, w) of one pose/placement of the figure, and its horizontal coord."""
    s = ident["height"] * rng.uniform(0.92, 1.05) * h  # figure height in pixels
    y0 = (h - s) / 2 + rng.uniform(-0.04, 0.04) * h
    cx = w / 2 + rng.normal(0.0, 0.05) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    v, u = (yy + 0.5 - y0) / s, (xx + 0.5 - cx) / s  # figure units: v=0 head top, v=1 feet
    au = np.abs(u)
    lab = np.zeros((h, w), np.uint8)
    hr, sh, wa = ident["head"], ident["shoulder"], ident["waist"]
    t0 = 2 * hr + 0.015  # torso top/bottom in figure units
    t1 = t0 + ident["torso"]
    # Legs: the stance (gap opening towards the feet) changes per image, like walking.
    lv = np.clip((v - t1) / (1 - t1), 0, 1)
    spread = wa * rng.uniform(0.05, 0.4) * lv
    legs = (v >= t1) & (v <= 1) & (au >= 0.01 + spread) & (au <= wa + spread)
    lab[legs] = 5
    if ident["legs"] == 1:  # shorts: bare lower legs
        lab[legs & (lv > 0.45)] = 1
    elif ident["legs"] == 2:  # horizontally striped trousers
        lab[legs & ((lv * 12) % 1 < 0.35)] = 6
    lab[legs & (v > 0.96)] = 8
    # Torso tapering from the shoulders to the waist, with the identity's pattern.
    tv = (v - t0) / (t1 - t0)
    half = sh + (wa - sh) * np.clip(tv, 0, 1)
    torso = (tv >= 0) & (tv <= 1) & (au <= half)
    lab[torso] = 3
    tu, n = (u / half + 1) / 2, ident["stripes"]
    # Pattern types: plain, horizontal stripes, vertical stripes, checks, one chest band at n/8.
    pattern = [np.zeros_like(torso), np.floor(tv * 2 * n) % 2 == 1, np.floor(tu * 2 * n) % 2 == 1,
               (np.floor(tv * n) + np.floor(tu * n)) % 2 == 1, np.abs(tv - n / 8) < 0.09]
    pattern = pattern[ident["pattern"]]
    lab[torso & pattern] = 4
    # Arms beside the torso; sleeve length decides where bare skin starts.
    arm_v = (v - t0 - 0.01) / (ident["torso"] + 0.07)
    arms = (arm_v >= 0) & (arm_v <= 1) & (au > sh + 0.004) & (au <= sh + 0.05)
    lab[arms] = 3
    lab[arms & (arm_v > ident["sleeve"])] = 1
    head = (u / (0.85 * hr)) ** 2 + ((v - hr) / hr) ** 2 <= 1
    lab[head] = 1
    lab[head & (v < ident["hair"] * hr)] = 2
    if ident["bag"]:  # bag on one side, strap across the torso
        side_u = u if ident["bag"] == 2 else -u
        bag_top = t0 + 0.45 * ident["torso"]
        lab[(side_u > sh + 0.01) & (side_u < sh + 0.1) & (v > bag_top) & (v < bag_top + 0.12)] = 7
        strap_u = -sh + 2 * sh * (v - t0) / (bag_top - t0)
        lab[torso & (v < bag_top) & (np.abs(side_u - strap_u) < 0.014)] = 7
    return lab, u / sh


def _background(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    """Clutter (h, w, channels) in [0, 1]: a tinted gradient plus a few rectangles."""
    # Both modalities draw clutter of the same brightness range, so the background does not
    # give the modality away more than the sensor itself does.
    bg = np.ones((h, w, channels), np.float32) * rng.uniform(0.2, 0.8, channels)
    bg += (np.linspace(-0.1, 0.1, h, dtype=np.float32) * rng.uniform(-1, 1))[:, None, None]
    for _ in range(int(rng.integers(3, 7))):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        dy, dx = int(rng.integers(h // 16, h // 3 + 1)), int(rng.integers(w // 8, w // 2 + 1))
        bg[y : y + dy, x : x + dx] = rng.uniform(0.05, 1.0, channels)
    return bg


def _render(ident: dict, rng: np.random.Generator, size: tuple, light: np.ndarray, ir: bool):
    """One uint8 (h, w, 3) image of ``ident`` under a camera's ``light`` (gain per channel)."""
    h, w = size
    lab, x = _figure(ident, rng, h, w)
    bg = _background(rng, h, w, 1 if ir else 3)
    pal = ident["materials"][:, None] if ir else ident["colours"]  # (parts, channels)
    img = pal.astype(np.float32)[lab]  # (h, w, channels)
    if not ir:  # round-body shading for visible light only
        img *= np.clip(1 - 0.15 * x**2, 0.6, 1)[..., None]
    img = np.where(lab[..., None] == 0, bg, img)
    if ir:  # thermal sensors are blurry: 3x3 box blur by shifted sums
        pad = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img = sum(pad[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
    img = img * (light * rng.uniform(0.9, 1.1)) + 0.02 * rng.standard_normal(img.shape, np.float32)
    out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.repeat(out, 3, axis=2) if ir else out


def _light(rng: np.random.Generator, ir: bool) -> np.ndarray:
    """A camera's fixed gain (infrared: one channel) or gain x tint (visible: RGB)."""
    gain = rng.uniform(0.85, 1.1) if ir else rng.uniform(0.75, 1.1) * rng.uniform(0.85, 1.15, 3)
    return np.float32(gain).reshape(-1)


def _read_marker(path: Path):
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


_held = threading.local()  # lock files this thread holds (the lock is re-entrant per thread)


def _acquire(fd: int) -> bool:
    """Try to lock ``fd`` exclusively without waiting; True when locked."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _generation_lock(root: str | os.PathLike):
    """Hold ``root/.tskd_synthetic.lock`` exclusively: one generator per folder at a time.

    Why: several processes (DDP ranks, two runs started together) may ask for the same synthetic
    folder at once; without this, a second one took the first one's "incomplete" marker for an
    interrupted run and deleted the tree being written. Others wait here, then find the finished
    tree. The OS drops the lock when its holder dies, so a crashed run never blocks the next one,
    and the file itself is never deleted (deleting a lock file lets two processes lock two
    different files).
    """
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path / LOCK)
    held = getattr(_held, "paths", None)
    if held is None:
        held = _held.paths = set()
    if key in held:  # ensure_synthetic -> make_*: this thread already holds it
        yield
        return
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _acquire(fd):
            owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            log.info("synthetic data at %s is being generated by %s; waiting for it", path, owner)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:  # pragma: no cover - Windows
                while not _acquire(fd):
                    time.sleep(0.5)
        os.ftruncate(fd, 0)  # who holds it, for the message above
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()}".encode())
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:  # pragma: no cover - Windows
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)


def _prepare(root: str | os.PathLike, layout: str, params: dict) -> Path:
    """Remove an earlier synthetic tree at ``root`` and mark generation as in progress.

    Call with :func:`_generation_lock` held: then no other process is writing here, and a marker
    left incomplete belongs to a run that died, so its folders can go.
    """
    path = Path(root)
    if (path / MARKER).is_file():  # ours: remove what the earlier run generated
        old = _read_marker(path)
        old_layout = old.get("layout") if isinstance(old, dict) else None
        # Marked incomplete before anything is removed: the tree never looks finished while
        # it is half gone.
        (path / MARKER).write_text(json.dumps({**params, "complete": False}))
        for name in _LAYOUT_DIRS.get(old_layout, ()) + _LAYOUT_DIRS[layout]:
            shutil.rmtree(path / name, ignore_errors=True)
    clash = [n for n in _LAYOUT_DIRS[layout] if (path / n).exists()]
    if clash:
        raise DatasetError(
            f"{path} already holds {', '.join(clash)} but no {MARKER}: it was not made by the "
            "synthetic generator, so it is left untouched. Choose an empty or new folder."
        )
    path.mkdir(parents=True, exist_ok=True)
    # Written before any image: an interrupted run still leaves a marker (never "complete").
    (path / MARKER).write_text(json.dumps({**params, "complete": False}))
    return path


def make_sysu(root, seed=0, num_train=40, num_val=8, num_test=24, images_per_cam=4,
              size=(128, 64)) -> Path:
    """Write a SYSU-MM01-layout dataset (``cam1..cam6``, ``exp/``) under ``root``.

    Ids are spaced out (never contiguous) and shuffled across splits. Training ids may lack a
    camera but keep >= 1 visible and >= 1 infrared; validation ids have no cam1/cam2; test ids
    have >= 1 infrared and >= 1 visible camera, and all but every 8th have cam1 or cam2.
    """
    params = _params("sysu", make_sysu, root, seed=seed, num_train=num_train, num_val=num_val,
                     num_test=num_test, images_per_cam=images_per_cam, size=size)
    with _generation_lock(root):
        path = _prepare(root, "sysu", params)
        rng = np.random.default_rng(seed)
        total = num_train + num_val + num_test  # ids 3i+1 or 3i+2: gaps >= 2, never contiguous
        perm = [int(i) for i in
                rng.permutation(3 * np.arange(total) + 1 + rng.integers(0, 2, total))]
        splits = {"train": sorted(perm[:num_train]), "val": sorted(perm[num_train:-num_test]),
                  "test": sorted(perm[-num_test:])}
        for name in _LAYOUT_DIRS["sysu"]:  # every camera folder exists, even if left unused
            (path / name).mkdir()
        for name, ids in splits.items():
            (path / "exp" / f"{name}_id.txt").write_text(",".join(map(str, ids)) + "\n")
        lights = {c: _light(rng, c in (3, 6)) for c in range(1, 7)}

        def pick(cams, p):  # each camera kept with probability p, at least one kept
            kept = [c for c in cams if rng.random() < p]
            return kept or [cams[int(rng.integers(len(cams)))]]

        for pid in sorted(perm):
            ident = _identity(rng)
            if pid in splits["train"]:
                cams = pick((1, 2, 4, 5), 0.8) + pick((3, 6), 0.8)
            elif pid in splits["val"]:
                cams = pick((4, 5), 0.85) + pick((3, 6), 0.85)
            elif splits["test"].index(pid) % 8 == 7:
                cams = pick((4, 5), 0.75) + pick((3, 6), 0.8)
            else:
                cams = pick((1, 2), 0.75) + [c for c in (4, 5) if rng.random() < 0.75]
                cams += pick((3, 6), 0.8)
            for cam in sorted(cams):
                folder = path / f"cam{cam}" / f"{pid:04d}"
                folder.mkdir(parents=True)
                for k in range(1, images_per_cam + 1):
                    img = _render(ident, rng, size, lights[cam], cam in (3, 6))
                    Image.fromarray(img).save(folder / f"{k:04d}.jpg", quality=90)
        (path / MARKER).write_text(json.dumps({**params, "complete": True}))
        log.info("synthetic SYSU-MM01 layout written to %s", path)
        return path


def make_regdb(root, seed=0, num_ids=40, images_per_modality=6, size=(128, 64)) -> Path:
    """Write a RegDB-layout dataset (``Visible/``, ``Thermal/``, ``idx/`` for trials 1..10).

    Ids 1..num_ids; each trial splits them at random into halves: training labels
    0..num_ids/2-1 in ascending raw-id order, test labels = raw ids.
    """
    params = _params("regdb", make_regdb, root, seed=seed, num_ids=num_ids,
                     images_per_modality=images_per_modality, size=size)
    if num_ids % 2:
        raise DatasetError(f"synthetic RegDB: num_ids must be even (half/half), got {num_ids}.")
    with _generation_lock(root):
        path = _prepare(root, "regdb", params)
        rng = np.random.default_rng(seed)
        lights = {False: _light(rng, False), True: _light(rng, True)}
        files: dict[tuple[int, str], list[str]] = {}
        for pid in range(1, num_ids + 1):
            ident = _identity(rng)
            for folder, prefix, ir in (("Visible", "v", False), ("Thermal", "t", True)):
                (path / folder / str(pid)).mkdir(parents=True)
                files[pid, folder] = [f"{folder}/{pid}/{prefix}_{pid:05d}_{k}.bmp"
                                      for k in range(1, images_per_modality + 1)]
                for rel in files[pid, folder]:
                    Image.fromarray(_render(ident, rng, size, lights[ir], ir)).save(path / rel)
        (path / "idx").mkdir()
        for trial in range(1, 11):
            order = [int(i) for i in
                     np.random.default_rng([seed, trial]).permutation(num_ids) + 1]
            train, test = sorted(order[: num_ids // 2]), sorted(order[num_ids // 2 :])
            for modality, folder in (("visible", "Visible"), ("thermal", "Thermal")):
                for split, ids in (("train", train), ("test", test)):
                    lines = [f"{rel} {label if split == 'train' else pid}"
                             for label, pid in enumerate(ids) for rel in files[pid, folder]]
                    out = path / "idx" / f"{split}_{modality}_{trial}.txt"
                    out.write_text("\n".join(lines) + "\n")
        (path / MARKER).write_text(json.dumps({**params, "complete": True}))
        log.info("synthetic RegDB layout written to %s", path)
        return path


def make_llcm(root, seed=0, num_train=24, num_test=16, images_per_cam=2, size=(128, 64)) -> Path:
    """Write an LLCM-layout dataset (``idx/``, ``test_vis/``, ``test_nir/``) under ``root``.

    Ids are spaced out and shuffled across the splits; each id is seen by a random subset of
    the visible cameras 1..9 and of the infrared cameras 1, 2, 4..9 (at least one of each), so
    some ids share a camera number across modalities (what LLCM's camera rule removes). The
    training images live in ``train_vis/`` and ``train_nir/`` (same ``cam<k>/<pid>/`` folders):
    our choice, as readers follow the paths that ``idx/train_vis.txt`` / ``train_nir.txt`` list
    (labels 0..num_train-1 in ascending raw-id order).
    """
    params = _params("llcm", make_llcm, root, seed=seed, num_train=num_train, num_test=num_test,
                     images_per_cam=images_per_cam, size=size)
    with _generation_lock(root):
        path = _prepare(root, "llcm", params)
        rng = np.random.default_rng(seed)
        total = num_train + num_test  # ids 3i+1 or 3i+2: gaps >= 2, never contiguous
        perm = [int(i) for i in
                rng.permutation(3 * np.arange(total) + 1 + rng.integers(0, 2, total))]
        train, test = sorted(perm[:num_train]), sorted(perm[num_train:])
        for name in _LAYOUT_DIRS["llcm"]:
            (path / name).mkdir()
        (path / "idx" / "test_id.txt").write_text(",".join(map(str, test)) + "\n")
        sensors = ((False, _LLCM_VIS_CAMS), (True, _LLCM_NIR_CAMS))
        lights = {(ir, c): _light(rng, ir) for ir, cams in sensors for c in cams}
        label = {pid: i for i, pid in enumerate(train)}
        lines: dict[bool, list[str]] = {False: [], True: []}
        for pid in sorted(perm):
            ident = _identity(rng)
            split = "train" if pid in label else "test"
            for ir, cams in sensors:
                kept = [c for c in cams if rng.random() < 0.4]
                kept = kept or [cams[int(rng.integers(len(cams)))]]
                modality = "nir" if ir else "vis"
                for cam in kept:
                    rel = f"{split}_{modality}/cam{cam}/{pid:04d}"
                    (path / rel).mkdir(parents=True)
                    for k in range(1, images_per_cam + 1):
                        img = _render(ident, rng, size, lights[ir, cam], ir)
                        Image.fromarray(img).save(path / rel / f"{k:04d}.jpg", quality=90)
                        if split == "train":
                            lines[ir].append(f"{rel}/{k:04d}.jpg {label[pid]}")
        for ir, name in ((False, "train_vis.txt"), (True, "train_nir.txt")):
            (path / "idx" / name).write_text("\n".join(lines[ir]) + "\n")
        (path / MARKER).write_text(json.dumps({**params, "complete": True}))
        log.info("synthetic LLCM layout written to %s", path)
        return path


# The real SYSU-MM01 counts (tskd/data/sysu.py): official train/val/test ids, training images
# of train ∪ val per modality, test images per modality (infrared = the queries).
SYSU_FULL = {"num_train": 296, "num_val": 99, "num_test": 96, "train_visible": 22258,
             "train_infrared": 11909, "test_visible": 6775, "test_infrared": 3803}
SCALES = ("small", "full")


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """``total`` split into integers >= 1 proportional to ``weights`` (largest remainders)."""
    n = len(weights)
    if total < n:
        raise DatasetError(f"cannot give {n} (identity, camera) folders >= 1 image out of {total}")
    share = (total - n) * weights / weights.sum()  # one image each first, the rest by weight
    out = np.floor(share).astype(np.int64)
    rest = total - n - int(out.sum())
    out[np.argsort(-(share - out), kind="stable")[:rest]] += 1
    return out + 1


def make_sysu_full(root, seed=0, size=(64, 32)) -> Path:
    """Write a SYSU-MM01-layout dataset at the real dataset's scale under ``root``.

    Same figures, cameras and split rules as :func:`make_sysu` (validation ids without
    cam1/cam2, every 8th test id without cam1/cam2), with the official counts of
    :data:`SYSU_FULL`: 296 + 99 training ids, 96 test ids, and per split and modality exactly the
    real number of images, spread over that split's (identity, camera) folders with random
    weights in [0.5, 1.5] (the real per-camera counts vary too). The layout (splits, cameras,
    counts, camera lights) is drawn from ``seed``; each identity's figure and images from
    ``(seed, pid)``, so an identity's files do not depend on the order folders are written in.

    Args:
        root: Output folder (created).
        seed: Seed of every random draw.
        size: (height, width) of the generated images; small by default to bound disk and time
            (the datamodule's cache resizes them to ``dataset.img_h`` x ``img_w``).
    """
    c = SYSU_FULL
    params = _params("sysu", make_sysu_full, root, seed=seed, size=size)
    params["scale"] = "full"
    with _generation_lock(root):
        path = _prepare(root, "sysu", params)
        rng = np.random.default_rng(seed)
        total = c["num_train"] + c["num_val"] + c["num_test"]
        perm = [int(i) for i in
                rng.permutation(3 * np.arange(total) + 1 + rng.integers(0, 2, total))]
        n_tr, n_te = c["num_train"], c["num_test"]
        splits = {"train": sorted(perm[:n_tr]), "val": sorted(perm[n_tr:-n_te]),
                  "test": sorted(perm[-n_te:])}
        for name in _LAYOUT_DIRS["sysu"]:
            (path / name).mkdir()
        for name, ids in splits.items():
            (path / "exp" / f"{name}_id.txt").write_text(",".join(map(str, ids)) + "\n")
        lights = {cam: _light(rng, cam in (3, 6)) for cam in range(1, 7)}

        def pick(cams, p):
            kept = [cam for cam in cams if rng.random() < p]
            return kept or [cams[int(rng.integers(len(cams)))]]

        cams_of: dict[int, list[int]] = {}
        for pid in sorted(perm):
            if pid in splits["test"]:
                if splits["test"].index(pid) % 8 == 7:
                    cams_of[pid] = pick((4, 5), 0.75) + pick((3, 6), 0.8)
                else:
                    cams_of[pid] = (pick((1, 2), 0.75)
                                    + [cam for cam in (4, 5) if rng.random() < 0.75]
                                    + pick((3, 6), 0.8))
            elif pid in splits["val"]:
                cams_of[pid] = pick((4, 5), 0.85) + pick((3, 6), 0.85)
            else:
                cams_of[pid] = pick((1, 2, 4, 5), 0.8) + pick((3, 6), 0.8)
        # Exact totals per (split group, modality), spread over that group's folders.
        count: dict[tuple[int, int], int] = {}
        groups = {"train": splits["train"] + splits["val"], "test": splits["test"]}
        for group, ids in groups.items():
            for modality, cams in (("visible", (1, 2, 4, 5)), ("infrared", (3, 6))):
                pairs = [(pid, cam) for pid in sorted(ids) for cam in sorted(cams_of[pid])
                         if cam in cams]
                n = _apportion(c[f"{group}_{modality}"], rng.uniform(0.5, 1.5, len(pairs)))
                count.update(zip(pairs, (int(k) for k in n)))
        for pid in sorted(perm):
            pid_rng = np.random.default_rng([seed, pid])
            ident = _identity(pid_rng)
            for cam in sorted(cams_of[pid]):
                folder = path / f"cam{cam}" / f"{pid:04d}"
                folder.mkdir(parents=True)
                for k in range(1, count[pid, cam] + 1):
                    img = _render(ident, pid_rng, size, lights[cam], cam in (3, 6))
                    Image.fromarray(img).save(folder / f"{k:04d}.jpg", quality=90)
        (path / MARKER).write_text(json.dumps({**params, "complete": True}))
        log.info("full-scale synthetic SYSU-MM01 written to %s", path)
        return path


_MAKERS = {"sysu": make_sysu, "regdb": make_regdb, "llcm": make_llcm}
LAYOUTS = tuple(_MAKERS)  # dataset.synthetic.layout


def _params(layout: str, maker, root, **kw) -> dict:
    """Checked generation parameters with defaults filled in, JSON-normalised (the marker)."""
    try:
        bound = inspect.signature(maker).bind(root, **kw)
    except TypeError as err:
        raise DatasetError(f"synthetic {layout}: bad parameter(s) {sorted(kw)}: {err}") from err
    bound.apply_defaults()
    args = {k: v for k, v in bound.arguments.items() if k != "root"}
    counts = {k: v for k, v in args.items() if k not in ("seed", "size")}
    counts.update(height=args["size"][0], width=args["size"][1])
    for name, value in counts.items():
        if int(value) < 1:
            raise DatasetError(f"synthetic {layout}: {name} must be >= 1, got {value}.")
    return json.loads(json.dumps({"layout": layout, "version": _VERSION, **args}, default=int))


def ensure_synthetic(root: str | os.PathLike, layout: str, seed: int = 0, scale: str = "small",
                     **kw) -> Path:
    """Generate the synthetic ``layout`` ("sysu", "regdb" or "llcm") at ``root`` unless there.

    Generation is skipped when ``root/.tskd_synthetic.json`` records a completed run with the
    same parameters; otherwise the earlier synthetic tree is removed and rebuilt. Safe to call
    from several processes at once: one generates, the others wait for it and then use its
    result (see :func:`_generation_lock`).

    Args:
        root: Dataset folder.
        layout: "sysu", "regdb" or "llcm".
        seed: Seed of every random draw.
        scale: "small" (the default, a few seconds) or "full" (SYSU only: the real dataset's
            counts, :func:`make_sysu_full`). The small marker does not record ``scale``, so
            folders generated before the option existed stay up to date.
        **kw: Further arguments of the generator (e.g. ``size``).
    """
    if layout not in _MAKERS:
        raise DatasetError(f"Unknown synthetic layout {layout!r}; valid: {', '.join(_MAKERS)}.")
    if scale not in SCALES or (scale == "full" and layout != "sysu"):
        raise DatasetError(f"synthetic scale={scale!r} for layout {layout!r}: use 'small', or "
                           "'full' with the sysu layout")
    maker = make_sysu_full if scale == "full" else _MAKERS[layout]
    params = _params(layout, maker, root, seed=seed, **kw)
    if scale == "full":
        params["scale"] = "full"
    with _generation_lock(root):
        # Checked under the lock: a run that held it before us may have just finished this.
        if _read_marker(Path(root)) == {**params, "complete": True}:
            log.info("synthetic %s data at %s is up to date", layout, root)
            return Path(root)
        return maker(root, seed=seed, **kw)
