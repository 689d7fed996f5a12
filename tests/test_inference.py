"""The embedding API (tskd.features.images) and the folder CLI (python -m tskd.apps.embed).

A tiny untrained resnet18 checkpoint (random BatchNorm statistics so every layer matters) and a
small synthetic SYSU-layout dataset stand in for a trained model (helpers/tiny_checkpoint.py,
the session fixture ``tiny`` shared with the export and visualiser tests).
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import configs
from helpers.tiny_checkpoint import IMG_SIZE, SOURCE_SIZE, make_non_finite_checkpoint
from PIL import Image

from tskd.core.errors import CheckpointError, DatasetError, InputError
from tskd.data.datamodule import ReIDDataModule
from tskd.data.protocol import INFRARED, VISIBLE
from tskd.features.images import Embedder, list_images, parse_modality


@pytest.fixture(scope="module")
def embedder(tiny):
    return Embedder.from_checkpoint(tiny[0])


def test_embed_matches_evaluation_features(tiny, embedder):
    from tskd.features.protocol import embed_protocol

    ckpt, root = tiny
    dm = ReIDDataModule(configs.dataset(root=str(root), img_h=IMG_SIZE[0], img_w=IMG_SIZE[1],
                                        trial=0, cache_dir=str(root.parent / "cache")),
                        configs.loader_data(num_workers=0), mode="all", seed=0, test_only=True)
    dm.setup("test")
    p = dm.protocol
    ref = embed_protocol(embedder.module.embed, dm.test_images, p, batch_size=16, flip=False,
                         device="cpu")
    index = np.asarray(ref["index"])
    assert set(p.modality[index]) == {VISIBLE, INFRARED}  # both stems are compared
    for modality in (VISIBLE, INFRARED):
        rows = np.flatnonzero(p.modality[index] == modality)
        paths = [p.paths[i] for i in index[rows]]
        for feature in ("fc", "pool"):
            got = embedder.embed(paths, "visible" if modality == VISIBLE else "infrared",
                                 batch_size=7, feature=feature)
            want = np.asarray(ref[feature])[rows]
            assert got.shape == want.shape == (len(rows), 512)
            assert np.abs(got - want).max() < 1e-5, (modality, feature)


def test_inputs_paths_pil_arrays_agree(tiny, embedder):
    _, root = tiny
    files = sorted((root / "cam3").rglob("*.jpg"))[:5]
    from_paths = embedder.embed(files, 1)
    pil = [Image.open(f) for f in files]
    full = [np.asarray(Image.open(f).convert("RGB")) for f in files]  # 96x48: resized inside
    grey = [np.asarray(Image.open(f).convert("L")) for f in files]  # (H, W) infrared-style
    assert full[0].shape == (*SOURCE_SIZE, 3)
    np.testing.assert_allclose(embedder.embed(pil, "infrared"), from_paths, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(full, "ir"), from_paths, atol=1e-6)
    # the synthetic infrared images are R=G=B, so grey -> RGB loses nothing
    np.testing.assert_allclose(embedder.embed(grey, "thermal"), from_paths, atol=1e-6)
    assert from_paths.dtype == np.float32 and from_paths.shape == (5, embedder.feat_dim)
    np.testing.assert_allclose(np.linalg.norm(from_paths, axis=1), 1.0, atol=1e-5)
    # batch size changes nothing but rounding
    np.testing.assert_allclose(embedder.embed(files, 1, batch_size=1), from_paths, atol=1e-5)
    # the stems differ: the same images as "visible" give other features
    assert np.abs(embedder.embed(files, "visible") - from_paths).max() > 1e-3


def test_parse_modality_and_bad_inputs(embedder):
    assert [parse_modality(m) for m in ("visible", 0, "Infrared", 1, "thermal")] == [0, 0, 1, 1, 1]
    for bad in ("depth", 2, True, None):
        with pytest.raises(InputError, match="unknown modality .*'visible'"):
            parse_modality(bad)
    with pytest.raises(InputError, match="no images to embed"):
        embedder.embed([], "visible")
    with pytest.raises(InputError, match="unknown feature 'logits'"):
        embedder.embed([np.zeros((64, 32, 3), np.uint8)], 0, feature="logits")
    with pytest.raises(InputError, match="dtype float32"):
        embedder.embed([np.zeros((64, 32, 3), np.float32)], 0)
    with pytest.raises(DatasetError, match="cannot read image .*missing.jpg"):
        embedder.embed(["missing.jpg"], 0)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Embedder.from_checkpoint(tmp_path / "nope.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a tskd checkpoint"):
        Embedder.from_checkpoint(tmp_path / "other.ckpt")


def test_embed_cli_writes_features_and_index(tiny, embedder, tmp_path, capsys):
    from tskd.apps.embed import main

    _, root = tiny
    folder = tmp_path / "photos"
    sources = sorted((root / "cam6").rglob("*.jpg"))[:4]
    # nested folders and a non-image file: the index must be recursive, sorted, images only
    for i, src in enumerate(sources):
        dst = folder / ("b" if i % 2 else "a") / f"{3 - i}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out" / "feats.npy"
    assert main([str(tiny[0]), str(folder), "--modality", "infrared", "--out", str(out)]) == 0
    feats = np.load(out)
    index = json.loads(out.with_suffix(".json").read_text())
    assert index["files"] == ["a/1.jpg", "a/3.jpg", "b/0.jpg", "b/2.jpg"]
    assert index["modality"] == "infrared" and index["img_size"] == list(IMG_SIZE)
    assert feats.shape == (4, 512) and feats.dtype == np.float32
    want = embedder.embed([folder / f for f in index["files"]], "infrared")
    np.testing.assert_allclose(feats, want, atol=1e-6)
    assert [p.relative_to(folder).as_posix() for p in list_images(folder)] == index["files"]


def test_embed_cli_errors(tiny, tmp_path, capsys):
    from tskd.apps.embed import main

    ckpt, root = tiny
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main([str(ckpt), str(tmp_path / "empty"), "--modality", "visible"]) == 1
    assert "no images" in capsys.readouterr().err
    assert main([str(ckpt), str(root / "cam1"), "--modality", "uv"]) == 1
    assert "unknown modality 'uv'" in capsys.readouterr().err
    assert main([str(tmp_path / "x.ckpt"), str(root / "cam1"), "--modality", "visible"]) == 1
    assert "x.ckpt does not exist" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.npy"))  # nothing written on failure


def test_embed_cli_refuses_to_overwrite_unless_asked(tiny, tmp_path, capsys):
    from tskd.apps.embed import main

    ckpt, root = tiny
    run = tmp_path / "run"
    run.mkdir()
    metrics = run / "metrics.json"
    metrics.write_text('{"rank1": 61.2}')  # a run's results: --out run/metrics.npy names it
    args = [str(ckpt), str(root / "cam3"), "--modality", "infrared", "--out", str(run / "metrics")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{metrics} already exists; nothing was written" in err and "--overwrite" in err
    assert metrics.read_text() == '{"rank1": 61.2}' and not (run / "metrics.npy").exists()
    (run / "metrics.npy").write_bytes(b"older features")
    assert main(args) == 1
    assert f"{run / 'metrics.npy'} and {metrics} already exist" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    index, feats = json.loads(metrics.read_text()), np.load(run / "metrics.npy")
    assert index["modality"] == "infrared" and len(index["files"]) == len(feats) > 0
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "metrics.npy"]  # no temps


def test_non_finite_features_are_refused_naming_the_checkpoint(tiny, tmp_path, capsys):
    from tskd.apps.embed import main

    ckpt, root = tiny
    bad = make_non_finite_checkpoint(ckpt, tmp_path / "diverged.ckpt")
    files = sorted((root / "cam3").rglob("*.jpg"))[:2]
    with pytest.raises(CheckpointError, match=f"checkpoint {bad} holds NaN/Inf") as err:
        Embedder.from_checkpoint(bad).embed(files, "infrared")
    assert "non-finite features" in str(err.value)
    out = tmp_path / "feats.npy"
    assert main([str(bad), str(root / "cam3"), "--modality", "infrared", "--out", str(out)]) == 1
    msg = capsys.readouterr().err
    assert f"checkpoint {bad} holds NaN/Inf" in msg and "Nothing was written" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diverged.ckpt"]
    # a run's last.ckpt with the copy it replaced beside it: the message names that copy
    run = tmp_path / "checkpoints"
    run.mkdir()
    bad.rename(run / "last.ckpt")
    shutil.copyfile(ckpt, run / "last.prev.ckpt")
    with pytest.raises(CheckpointError) as err:
        Embedder.from_checkpoint(run / "last.ckpt").embed(files, "infrared")
    assert f"use the copy it replaced, {run / 'last.prev.ckpt'}" in str(err.value)


def test_embed_out_naming_a_folder_writes_inside_it(tiny, tmp_path):
    from tskd.apps.embed import main

    ckpt, root = tiny
    args = [str(ckpt), str(root / "cam3"), "--modality", "infrared", "--out"]
    folder = tmp_path / "feats"
    folder.mkdir()
    assert main([*args, str(folder)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats"]  # nothing beside it
    assert sorted(p.name for p in folder.iterdir()) == ["features.json", "features.npy"]
    assert main([*args, f"{tmp_path / 'new'}{os.sep}"]) == 0  # a trailing slash: a new folder
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["features.json",
                                                                     "features.npy"]


def test_overwrite_keeps_the_pair_consistent_across_a_failure(tiny, tmp_path, monkeypatch,
                                                              capsys):
    from tskd.apps.embed import main

    ckpt, root = tiny
    out, index = tmp_path / "f.npy", tmp_path / "f.json"
    out.write_bytes(b"older features")
    index.write_text('{"older": "index"}')
    args = [str(ckpt), str(root / "cam3"), "--modality", "infrared", "--out", str(out),
            "--overwrite"]
    real_replace = os.replace

    def full_disk_at_the_index(src, dst, *a, **kw):  # the .npy is in place, the .json fails
        if os.fspath(dst) == str(index):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", full_disk_at_the_index)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and f"{out} and {index} are unchanged" in err
    assert out.read_bytes() == b"older features" and index.read_text() == '{"older": "index"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "f.npy"]  # no temporaries
    monkeypatch.undo()
    assert main(args) == 0
    feats, listed = np.load(out), json.loads(index.read_text())
    assert len(listed["files"]) == len(feats) > 0


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_embed_folder_with_a_broken_link_names_it(tiny, tmp_path, kind):
    _, root = tiny
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(next((root / "cam3").rglob("*.jpg")).read_bytes())
    if kind == "dangling":
        os.symlink(tmp_path / "moved" / "b.jpg", folder / "b.jpg")
        expected = f"points to {tmp_path / 'moved' / 'b.jpg'}, which does not exist"
    else:
        os.symlink("c.jpg", folder / "b.jpg")
        os.symlink("b.jpg", folder / "c.jpg")
        expected = "is a symbolic link loop"
    with pytest.raises(InputError) as err:
        list_images(folder)
    assert str(folder / "b.jpg") in str(err.value) and expected in str(err.value)
    assert "remove the link" in str(err.value)
