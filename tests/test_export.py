"""ONNX export per modality (tskd.apps.export): files, dynamic batch, outputs equal to PyTorch."""

from __future__ import annotations

import errno
import math
import sys

import numpy as np
import onnx  # dev extra: a missing install must fail here, not skip
import onnxruntime as ort
import pytest
import torch
from helpers.tiny_checkpoint import IMG_SIZE, make_non_finite_checkpoint
from onnx import numpy_helper

from tskd.apps import export
from tskd.apps.export import check_onnx, export_onnx, main
from tskd.core.errors import CheckpointError
from tskd.data.transforms import normalize_batch
from tskd.features.images import Embedder, prepare_image


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    ckpt, root = tiny
    return ckpt, root, export_onnx(ckpt, tmp_path_factory.mktemp("export") / "onnx")


def test_files_and_graph_interface(exported):
    _, _, files = exported
    assert set(files) == {"visible", "infrared"}
    assert files["visible"].name == "tskd_sysu_resnet18_visible.onnx"
    assert files["infrared"].name == "tskd_sysu_resnet18_infrared.onnx"
    for modality, path in files.items():
        model = onnx.load(str(path))
        (inp,), (out,) = model.graph.input, model.graph.output
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert inp.name == "images" and dims == ["batch", 3, *IMG_SIZE]
        assert out.name == "embedding"
        assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
        props = {p.key: p.value for p in model.metadata_props}
        assert props["modality"] == modality and props["img_h"] == str(IMG_SIZE[0])


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_onnx_matches_pytorch(exported, modality):
    ckpt, _, files = exported
    assert check_onnx(files[modality], ckpt, modality, batch_sizes=(1, 3)) < 1e-4


def test_onnx_on_real_images_matches_embedder(exported):
    ckpt, root, files = exported
    embedder = Embedder.from_checkpoint(ckpt)
    images = sorted((root / "cam3").rglob("*.jpg"))[:3]
    x = normalize_batch(np.stack([prepare_image(p, IMG_SIZE) for p in images])).numpy()
    outs = {}
    for modality, path in files.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs[modality] = session.run(None, {"images": x})[0]  # (3, 512)
        want = embedder.embed(images, modality)
        assert outs[modality].shape == want.shape == (3, 512)
        assert np.abs(outs[modality] - want).max() < 1e-4
        np.testing.assert_allclose(np.linalg.norm(outs[modality], axis=1), 1.0, atol=1e-5)
    # each file has its own stem built in
    assert np.abs(outs["visible"] - outs["infrared"]).max() > 1e-3


def test_cli_check_and_errors(exported, tmp_path, capsys, monkeypatch):
    ckpt, _, _ = exported
    assert main([str(ckpt), "--out", str(tmp_path / "o"), "--name", "m", "--check"]) == 0
    printed = capsys.readouterr().out
    assert "m_visible.onnx" in printed and "m_infrared.onnx" in printed
    diffs = [float(line.rsplit("=", 1)[1]) for line in printed.splitlines() if "max |" in line]
    assert len(diffs) == 2 and max(diffs) < 1e-4
    assert main([str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "o2")]) == 1
    assert "none.ckpt does not exist" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        export_onnx(tmp_path / "none.ckpt", tmp_path / "o3")


def test_missing_onnx_says_how_to_install(exported, tmp_path, monkeypatch, capsys):
    ckpt, _, files = exported
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(ImportError, match=r'pip install -e "\.\[extras\]"'):
        export_onnx(ckpt, tmp_path)
    assert main([str(ckpt), "--out", str(tmp_path)]) == 1
    assert "optional package 'onnx'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="onnxruntime"):
        check_onnx(files["visible"], ckpt, "visible")
    assert not list(tmp_path.glob("*.onnx"))


def test_check_fails_loudly_for_a_non_finite_model(exported, tmp_path, capsys, monkeypatch):
    """An all-NaN model is never "max |onnxruntime - torch| = 0.00e+00" with exit 0."""
    ckpt, _, files = exported
    bad = make_non_finite_checkpoint(ckpt, tmp_path / "diverged.ckpt")
    assert main([str(bad), "--out", str(tmp_path / "o"), "--check"]) == 1
    out, err = capsys.readouterr()
    assert "0.00e+00" not in out
    assert f"checkpoint {bad} holds NaN/Inf" in err and "nothing was exported" in err
    assert not list(tmp_path.rglob("*.onnx"))
    # the check alone: PyTorch's output of that checkpoint is not finite -> refused, named
    with pytest.raises(CheckpointError, match=f"checkpoint {bad} holds NaN/Inf"):
        check_onnx(files["visible"], bad, "visible")
    # an ONNX graph whose output is not finite (PyTorch's is): an infinite difference, a failure
    model = onnx.load(str(files["visible"]))
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array(np.full_like(arr, np.nan), init.name))
    poisoned = tmp_path / "poisoned.onnx"
    onnx.save(model, str(poisoned))
    assert check_onnx(poisoned, ckpt, "visible") == math.inf
    # such a difference fails tskd.apps.export --check loudly, exit 2
    monkeypatch.setattr(export, "check_onnx", lambda *a, **k: math.inf)
    assert main([str(ckpt), "--out", str(tmp_path / "o2"), "--check"]) == 2
    err = capsys.readouterr().err
    assert "fails the check (its output holds NaN/Inf): max |onnxruntime - torch| = inf" in err


def test_export_never_clobbers_and_writes_via_temporaries(exported, tmp_path, capsys,
                                                          monkeypatch):
    ckpt, _, _ = exported
    out = tmp_path / "onnx"
    names = ["tskd_sysu_resnet18_infrared.onnx", "tskd_sysu_resnet18_visible.onnx"]
    assert main([str(ckpt), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == names
    for n in names:
        (out / n).write_bytes(b"an earlier export")
    capsys.readouterr()
    assert main([str(ckpt), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out / names[1]} and {out / names[0]} already exist; nothing was written" in err
    assert "--overwrite" in err
    assert all((out / n).read_bytes() == b"an earlier export" for n in names)
    # a failure half-way through --overwrite (at the second graph) leaves the earlier pair whole
    real_export, calls = torch.onnx.export, []

    def full_disk_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", full_disk_at_the_second)
    assert main([str(ckpt), "--out", str(out), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(out) in err and "unchanged" in err
    assert sorted(p.name for p in out.iterdir()) == names  # no temporaries left
    assert all((out / n).read_bytes() == b"an earlier export" for n in names)
    monkeypatch.undo()
    assert main([str(ckpt), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == names
    for n in names:
        onnx.checker.check_model(onnx.load(str(out / n)))


def test_bad_out_and_opset_refused_before_any_work(tmp_path, capsys):
    never = tmp_path / "never_read.ckpt"  # not there: the option errors must come first
    a_file = tmp_path / "a_file"
    a_file.write_text("notes")
    assert main([str(never), "--out", str(a_file)]) == 1
    err = capsys.readouterr().err
    assert f"--out {a_file} is a file" in err and "pass a folder" in err
    assert a_file.read_text() == "notes"
    assert main([str(never), "--out", str(tmp_path / "o"), "--opset", "3"]) == 1
    err = capsys.readouterr().err
    assert "--opset 3" in err and "17" in err and "does not exist" not in err
    assert not (tmp_path / "o").exists()
