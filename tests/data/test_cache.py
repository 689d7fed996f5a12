"""Tests of the memory-mapped image cache: build, reuse, every rebuild reason, standard arrays."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tskd.core.errors import DatasetError
from tskd.data import cache
from tskd.data.cache import cached_images, load_image, manifest_path, standard_train_arrays

SIZE = (24, 12)  # (h, w)


def _write_images(folder, n, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = rng.integers(20, 60), rng.integers(10, 40)
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr).convert(mode)
        p = folder / f"img{i:02d}.png"
        img.save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    return _write_images(folder, 5)


def _reference(path, size):
    h, w = size
    return np.asarray(Image.open(path).convert("RGB").resize((w, h), Image.LANCZOS))


def test_load_image_equals_pil_lanczos(images, tmp_path):
    out = load_image(images[0], SIZE)
    assert out.dtype == np.uint8 and out.shape == (24, 12, 3)
    np.testing.assert_array_equal(out, _reference(images[0], SIZE))
    gray = _write_images(tmp_path, 1, seed=3, mode="L")[0]
    g = load_image(gray, SIZE)
    assert g.shape == (24, 12, 3)
    np.testing.assert_array_equal(g[..., 0], g[..., 2])  # grayscale -> 3 equal channels


@pytest.mark.parametrize("content", [b"not an image at all", None])
def test_load_image_corrupt_or_missing_names_file(tmp_path, content):
    bad = tmp_path / "broken.jpg"
    if content is not None:
        bad.write_bytes(content)
    with pytest.raises(DatasetError, match="broken.jpg") as err:
        load_image(bad, SIZE)
    assert "re-download" in str(err.value) and "remove" in str(err.value)


def test_build_then_reuse_without_rebuild(images, tmp_path, caplog):
    cfile = tmp_path / "cache" / "train.npy"
    with caplog.at_level(logging.INFO, logger="tskd.data.cache"):
        arr = cached_images(images, cfile, SIZE, desc="visible")
    assert "visible: building cache" in caplog.text and "array missing" in caplog.text
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    assert arr.shape == (5, 24, 12, 3) and arr.dtype == np.uint8
    for i, p in enumerate(images):
        np.testing.assert_array_equal(arr[i], _reference(p, SIZE))
    manifest = json.loads(manifest_path(cfile).read_text())
    assert manifest["version"] == cache.FORMAT_VERSION and manifest["size"] == [24, 12]
    assert manifest["count"] == 5 and manifest["files"] == images
    assert manifest["fingerprint"] == cache.fingerprint(images)
    assert not list(cfile.parent.glob("*.partial"))

    before = os.stat(cfile)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tskd.data.cache"):
        again = cached_images(images, cfile, SIZE, desc="visible")
    after = os.stat(cfile)
    assert "visible: reusing cache" in caplog.text and "building" not in caplog.text
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert isinstance(again, np.memmap)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(arr))


def _rebuild_log(caplog, paths, cfile, size=SIZE):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tskd.data.cache"):
        arr = cached_images(paths, cfile, size)
    return arr, caplog.text


def test_rebuild_reasons(images, tmp_path, caplog):
    cfile = tmp_path / "c.npy"
    cached_images(images, cfile, SIZE)

    arr, text = _rebuild_log(caplog, images, cfile, size=(16, 8))
    assert "size changed" in text and arr.shape == (5, 16, 8, 3)

    arr, text = _rebuild_log(caplog, images[:4], cfile, size=(16, 8))
    assert "file list changed" in text and arr.shape == (4, 16, 8, 3)

    # Same name, new pixels and a new mtime: must be re-decoded.
    new = np.full((30, 20, 3), 200, dtype=np.uint8)
    Image.fromarray(new).save(images[1])
    st = os.stat(images[1])
    os.utime(images[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    arr, text = _rebuild_log(caplog, images[:4], cfile, size=(16, 8))
    assert "sources changed" in text
    np.testing.assert_array_equal(arr[1], np.full((16, 8, 3), 200, dtype=np.uint8))

    # Truncated array (e.g. disk full): detected, rebuilt.
    data = cfile.read_bytes()
    cfile.write_bytes(data[: len(data) // 2])
    arr, text = _rebuild_log(caplog, images[:4], cfile, size=(16, 8))
    assert "array damaged" in text and arr.shape == (4, 16, 8, 3)

    manifest_path(cfile).unlink()
    _, text = _rebuild_log(caplog, images[:4], cfile, size=(16, 8))
    assert "manifest missing" in text


def test_interrupted_build_leaves_nothing_valid(images, tmp_path, monkeypatch):
    cfile = tmp_path / "c.npy"
    real = cache.load_image
    calls = []

    def flaky(path, size):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(cache, "load_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        cached_images(images, cfile, SIZE)
    assert not cfile.exists() and not manifest_path(cfile).exists()
    assert not list(tmp_path.glob("*.partial"))
    monkeypatch.setattr(cache, "load_image", real)
    assert cached_images(images, cfile, SIZE).shape == (5, 24, 12, 3)


def test_parallel_decode_keeps_order(images, tmp_path):
    serial = cached_images(images, tmp_path / "a.npy", SIZE)
    parallel = cached_images(images, tmp_path / "b.npy", SIZE, num_workers=2)
    np.testing.assert_array_equal(np.asarray(serial), np.asarray(parallel))


def test_unwritable_cache_dir_and_empty_list(images, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder is needed: fails even when run as root
    with pytest.raises(DatasetError, match="dataset.cache_dir") as err:
        cached_images(images, blocker / "sub" / "c.npy", SIZE)
    assert str(blocker / "sub") in str(err.value)
    with pytest.raises(DatasetError, match="no images"):
        cached_images([], tmp_path / "c.npy", SIZE)


def test_corrupt_source_during_build_names_file(images, tmp_path):
    bad = tmp_path / "src" / "zz_bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    with pytest.raises(DatasetError, match="zz_bad.jpg"):
        cached_images([*images, str(bad)], tmp_path / "c.npy", SIZE)


def _save_standard(root, vis, ir, vis_labels, ir_labels):
    np.save(root / "train_rgb_resized_img.npy", vis)
    np.save(root / "train_rgb_resized_label.npy", vis_labels)
    np.save(root / "train_ir_resized_img.npy", ir)
    np.save(root / "train_ir_resized_label.npy", ir_labels)


def test_standard_arrays_accepted_when_they_fit(tmp_path):
    rng = np.random.default_rng(0)
    vis = rng.integers(0, 256, size=(6, 24, 12, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, size=(4, 24, 12, 3), dtype=np.uint8)
    vl, il = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 2, 2])
    assert standard_train_arrays(tmp_path, SIZE, vl, il) is None  # nothing there yet
    _save_standard(tmp_path, vis, ir, vl, il)
    got = standard_train_arrays(tmp_path, SIZE, vl, il)
    assert got is not None
    assert all(isinstance(a, np.memmap) and not a.flags.writeable for a in got)
    np.testing.assert_array_equal(got[0], vis)
    np.testing.assert_array_equal(got[1], ir)


@pytest.mark.parametrize(
    "case, message",
    [("size", "shape"), ("count", "shape"), ("labels", "labels differ"), ("dtype", "uint8")],
)
def test_standard_arrays_rejected_when_they_do_not_fit(tmp_path, caplog, case, message):
    vis = np.zeros((6, 24, 12, 3), np.uint8)
    ir = np.zeros((4, 24, 12, 3), np.uint8)
    vl, il = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 2, 2])
    saved_vl = vl.copy()
    if case == "size":
        vis = np.zeros((6, 20, 12, 3), np.uint8)
    elif case == "count":
        vis, saved_vl = vis[:5], vl[:5]
    elif case == "labels":
        saved_vl = np.array([0, 0, 1, 2, 2, 2])
    else:
        vis = vis.astype(np.float32)
    _save_standard(tmp_path, vis, ir, saved_vl, il)
    with caplog.at_level(logging.INFO, logger="tskd.data.cache"):
        assert standard_train_arrays(tmp_path, SIZE, vl, il) is None
    assert "ignoring" in caplog.text and message in caplog.text


# --- images with more than 8 bits per sample -------------------------------------------------

GRADIENT = np.arange(256, dtype=np.int64).reshape(16, 16)  # the expected 8-bit picture


def _save_deep(path, values, mode):
    """Writes ``values`` as a greyscale image of a 16/32-bit PIL mode; returns the path."""
    if mode == "I":
        img = Image.fromarray(values.astype(np.int32))
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        img = Image.frombytes(mode, values.shape[::-1], values.astype(dtype).tobytes())
    img.save(path)
    with Image.open(path) as back:  # the file really decodes to the mode under test
        assert back.mode == mode
    return str(path)


@pytest.mark.parametrize("mode, name", [("I;16", "g.png"), ("I;16B", "g.tif"), ("I", "g.tif")])
def test_16_bit_image_is_scaled_not_saturated(tmp_path, mode, name):
    path = _save_deep(tmp_path / name, GRADIENT * 257, mode)
    arr = cached_images([path], tmp_path / "c.npy", (16, 16))  # identity size: no resampling
    for channel in range(3):
        np.testing.assert_array_equal(arr[0, ..., channel], GRADIENT)
    # Through the real resize: equals resizing the 8-bit picture the same way.
    expected = np.asarray(
        Image.fromarray(GRADIENT.astype(np.uint8)).convert("RGB").resize((5, 9), Image.LANCZOS))
    np.testing.assert_array_equal(load_image(path, (9, 5)), expected)


def test_16_bit_rounding_and_full_scale(tmp_path):
    values = np.array([[0, 128, 129, 385, 65407, 65535]])  # 128/257 -> 0, 129/257 -> 1, ...
    path = _save_deep(tmp_path / "r.png", values, "I;16")
    assert load_image(path, (1, 6))[0, :, 0].tolist() == [0, 0, 1, 1, 255, 255]


@pytest.mark.parametrize("values, expected", [
    (GRADIENT, GRADIENT),  # 32-bit container holding 8-bit data: unchanged
    (GRADIENT * 257, GRADIENT),  # 16-bit data: / 257
    (GRADIENT * 4112 + 15, (GRADIENT * 4112 + 15) * 255 // (2**20 - 1)),  # 20 bits used
    (GRADIENT - 100, np.clip(GRADIENT - 100, 0, None)),  # negatives clipped to black
])
def test_32_bit_container_uses_the_bits_in_use(tmp_path, values, expected):
    path = _save_deep(tmp_path / "w.tif", values, "I")
    out = load_image(path, (16, 16))
    np.testing.assert_array_equal(out[..., 1], expected)


def test_to_rgb_leaves_8_bit_modes_alone(images):
    with Image.open(images[0]) as img:
        np.testing.assert_array_equal(np.asarray(cache.to_rgb(img)), np.asarray(img.convert("RGB")))
    grey = Image.fromarray(GRADIENT.astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(cache.to_rgb(grey))[..., 2], GRADIENT)


# --- temporary files ------------------------------------------------------------------------


def _dead_pid():
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp(folder, target, host, pid, age_s=0.0):
    token = secrets.token_hex(8)  # distinct names for the same (target, host, pid)
    path = folder / f"{target}.{host}.{pid}.{token}.partial"
    path.write_bytes(b"half an array")
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


@pytest.mark.e2e
def test_stale_temporaries_removed_live_and_foreign_ones_kept(images, tmp_path, caplog):
    cfile = tmp_path / "c.npy"
    here, dead, old = cache._host(), _dead_pid(), cache.STALE_TEMP_AGE_S + 60
    stale = [
        _temp(tmp_path, "c.npy", here, dead),  # killed build on this machine
        _temp(tmp_path, "c.json", here, dead),  # its manifest temporary
        _temp(tmp_path, "c.npy", "otherhost", 4242, age_s=old),  # other machine, a day idle
        _temp(tmp_path, "c.npy", here, os.getpid(), age_s=old),  # pid alive but reused
    ]
    legacy = tmp_path / f"c.npy.{dead}.partial"  # name used before host + token were added
    legacy.write_bytes(b"x")
    os.utime(legacy, (time.time() - old,) * 2)
    kept = [
        _temp(tmp_path, "c.npy", here, os.getpid()),  # a live build of the same cache
        _temp(tmp_path, "c.npy", "otherhost", 4242),  # a recent build on another machine
        _temp(tmp_path, "d.npy", here, dead),  # another cache's file: never ours to remove
        _temp(tmp_path, "xc.npy", here, dead),
    ]
    fresh_legacy = tmp_path / f"c.npy.{dead}.partial.keep"  # not the pattern at all
    fresh_legacy.write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="tskd.data.cache"):
        arr = cached_images(images, cfile, SIZE)
    assert arr.shape == (5, 24, 12, 3)
    assert not any(p.exists() for p in [*stale, legacy])
    assert all(p.exists() for p in [*kept, fresh_legacy])
    assert caplog.text.count("left by an interrupted cache build") == 5
    # Only the planted files remain besides the cache: the build's own temporaries are gone.
    left = {p.name for p in tmp_path.iterdir()} - {"src", "c.npy", "c.json"}
    assert left == {p.name for p in [*kept, fresh_legacy]}


def test_failure_after_decoding_removes_every_temporary(images, tmp_path, monkeypatch):
    cfile = tmp_path / "c.npy"
    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", full_disk)
    with pytest.raises(DatasetError, match="No space left on device.*dataset.cache_dir") as err:
        cached_images(images, cfile, SIZE)
    assert str(tmp_path) in str(err.value)
    assert not list(tmp_path.glob("*.partial")) and not manifest_path(cfile).exists()
    monkeypatch.undo()
    arr = cached_images(images, cfile, SIZE)  # the missing manifest forces a clean rebuild
    np.testing.assert_array_equal(arr[2], _reference(images[2], SIZE))


def test_two_builds_of_one_cache_do_not_collide(images, tmp_path, monkeypatch, caplog):
    """A second build of the same cache starts and finishes while the first is half done."""
    cfile = tmp_path / "c.npy"
    real = cache.load_image
    state = {"calls": 0, "temps_seen": None}

    def interleaved(path, size):
        state["calls"] += 1
        if state["calls"] == 3:  # builder A is mid-way: run builder B to the end now
            first = set(tmp_path.glob("c.npy.*.partial"))
            inner = cached_images(images, cfile, SIZE)
            assert inner.shape == (5, 24, 12, 3)
            state["temps_seen"] = first
            assert first and all(p.exists() for p in first)  # B left A's temporary alone
        return real(path, size)

    monkeypatch.setattr(cache, "load_image", interleaved)
    arr = cached_images(images, cfile, SIZE)
    assert len(state["temps_seen"]) == 1
    for i, p in enumerate(images):
        np.testing.assert_array_equal(arr[i], _reference(p, SIZE))
    assert not list(tmp_path.glob("*.partial"))
    monkeypatch.setattr(cache, "load_image", real)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tskd.data.cache"):
        cached_images(images, cfile, SIZE)
    assert "reusing cache" in caplog.text


# --- the cache proves its content (issue 20) ----------------------------------------------
def _block_tree_sha256(cfile) -> str:
    """Independent reference: SHA-256 of the SHA-256s of the array data's 64 MiB blocks."""
    data = np.load(cfile).tobytes()
    block = 64 << 20
    parts = [hashlib.sha256(data[i:i + block]).digest() for i in range(0, len(data), block)]
    return hashlib.sha256(b"".join(parts)).hexdigest()


def test_manifest_records_the_array_hash_and_a_changed_array_is_rebuilt(images, tmp_path,
                                                                         caplog):
    cfile = tmp_path / "c.npy"
    cached_images(images, cfile, SIZE)
    manifest = json.loads(manifest_path(cfile).read_text())
    assert manifest["array_sha256"] == _block_tree_sha256(cfile)
    # zeroed in place, modification time put back: the hash sees it, the cache is rebuilt
    st = os.stat(cfile)
    arr = np.load(cfile, mmap_mode="r+")
    arr[1] = 0
    arr.flush()
    del arr
    os.utime(cfile, ns=(st.st_atime_ns, st.st_mtime_ns))
    arr, text = _rebuild_log(caplog, images, cfile)
    assert "array content changed since it was built" in text
    np.testing.assert_array_equal(arr[1], _reference(images[1], SIZE))
    _, text = _rebuild_log(caplog, images, cfile)
    assert "reusing cache" in text


def test_source_rewritten_with_same_size_and_mtime_is_rebuilt(tmp_path, caplog):
    """cp -p, rsync -a and tar x keep mtimes: the fingerprint reads each file's bytes too."""
    folder = tmp_path / "src"
    folder.mkdir()
    paths = []
    for i in range(3):  # BMP: the same size for any pixels of one shape
        paths.append(str(folder / f"{i}.bmp"))
        Image.fromarray(np.full((30, 20, 3), 40 * i, np.uint8)).save(paths[-1])
    cfile = tmp_path / "c.npy"
    cached_images(paths, cfile, SIZE)
    st = os.stat(paths[1])
    Image.fromarray(np.full((30, 20, 3), 222, np.uint8)).save(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(paths[1]).st_size == st.st_size
    arr, text = _rebuild_log(caplog, paths, cfile)
    assert "sources changed" in text
    np.testing.assert_array_equal(arr[1], np.full((*SIZE, 3), 222, np.uint8))


def test_full_disk_is_found_before_decoding(images, tmp_path, monkeypatch):
    """The array's space is reserved first (posix_fallocate): a full disk is an error naming
    the folder and the fix, not a SIGBUS while the memory map is written."""
    cfile = tmp_path / "cache" / "c.npy"
    decoded = []
    real_load = cache.load_image
    monkeypatch.setattr(cache, "load_image", lambda p, size: decoded.append(p) or
                        real_load(p, size))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", full, raising=False)
    with pytest.raises(DatasetError) as err:
        cached_images(images, cfile, SIZE)
    msg = str(err.value)
    assert f"not enough space for the image cache {cfile}" in msg and "dataset.cache_dir" in msg
    assert "No space left on device" in msg and "needs" in msg
    assert decoded == [] and sorted(p.name for p in cfile.parent.iterdir()) == []
    # a filesystem that cannot reserve (no fallocate): the build goes on without it
    monkeypatch.setattr(cache.os, "posix_fallocate", lambda *a: (_ for _ in ()).throw(
        OSError(errno.EOPNOTSUPP, "Operation not supported")), raising=False)
    arr = cached_images(images, cfile, SIZE)
    np.testing.assert_array_equal(arr[0], _reference(images[0], SIZE))


def test_non_utf8_image_name_is_refused_before_decoding(images, tmp_path, monkeypatch):
    cfile = tmp_path / "c.npy"
    cached_images(images, cfile, SIZE)
    manifest = manifest_path(cfile).read_bytes()
    odd = os.fsencode(tmp_path / "src") + b"/caf\xe9.png"  # a Latin-1 name
    with open(odd, "wb") as fh:
        fh.write(open(images[0], "rb").read())
    decoded = []
    monkeypatch.setattr(cache, "load_image", lambda p, size: decoded.append(p))
    with pytest.raises(DatasetError) as err:
        cached_images([*images, os.fsdecode(odd)], cfile, SIZE)
    msg = str(err.value)
    assert repr(odd) in msg and "not valid UTF-8" in msg and "rename" in msg
    assert decoded == [] and manifest_path(cfile).read_bytes() == manifest
