"""Tests of pretrained-weight resolution and mapping; nothing here touches the network."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from tskd.core.errors import CheckpointError
from tskd.models.components import TwoStreamNet
from tskd.models.components.pretrained import resolve_pretrained, weights_file_name


@pytest.fixture(scope="module")
def r18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial BN buffers, so copying them is visible
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any attempt to download fails loudly instead of reaching the network."""

    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(f"offline test: refused {url}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def _assert_loaded(model: TwoStreamNet, sd: dict[str, torch.Tensor]) -> None:
    bb = model.backbone
    for stem in (bb.visible_stem, bb.infrared_stem):
        assert torch.equal(stem.conv1.weight, sd["conv1.weight"])
        assert torch.equal(stem.bn1.running_mean, sd["bn1.running_mean"])
        assert torch.equal(stem.bn1.bias, sd["bn1.bias"])
    assert torch.equal(bb.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
    assert torch.equal(bb.layer4[1].bn2.running_var, sd["layer4.1.bn2.running_var"])
    assert torch.equal(bb.layer4[0].downsample[0].weight, sd["layer4.0.downsample.0.weight"])
    assert bb.visible_stem.conv1.weight is not bb.infrared_stem.conv1.weight  # two copies


def test_local_file_maps_into_both_stems_and_shared_layers(tmp_path, r18_state):
    path = tmp_path / "resnet18-local.pth"
    torch.save(r18_state, path)
    model = TwoStreamNet(5, backbone="resnet18", pretrained=str(path))
    _assert_loaded(model, r18_state)
    assert model.config["pretrained"] == str(path)
    # Non-local blocks keep their identity init; the BN-neck is untouched.
    assert torch.count_nonzero(model.backbone.nl_layer2["0"].proj[1].weight) == 0
    # Identical stems -> identical embeddings for both modalities.
    x = torch.randn(2, 3, 64, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0), model(x, 1))


def test_wrapped_and_prefixed_state_dicts_are_accepted(tmp_path, r18_state):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in r18_state.items()}}, path)
    model = TwoStreamNet(5, backbone="resnet18", pretrained=path)  # a Path works too
    _assert_loaded(model, r18_state)
    assert model.config["pretrained"] == str(path)


def test_depth_mismatch_names_file_and_keys(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        TwoStreamNet(5, backbone="resnet18", pretrained=str(path))
    msg = str(info.value)
    assert str(path) in msg and "resnet18" in msg
    assert "96 unexpected keys" in msg and "layer1.2.bn1.bias" in msg
    assert "model.backbone" in msg


def test_shape_mismatch_is_reported(tmp_path, r18_state):
    bad = dict(r18_state)
    bad["layer2.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    del bad["layer3.1.bn1.bias"]
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as info:
        TwoStreamNet(5, backbone="resnet18", pretrained=str(path))
    msg = str(info.value)
    assert str(path) in msg
    assert "layer2.0.conv1.weight: file (3, 3, 1, 1) vs model (128, 64, 3, 3)" in msg
    assert "1 missing keys" in msg and "layer3.1.bn1.bias" in msg


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope" / "resnet18.pth"
    with pytest.raises(CheckpointError, match=r"nope.*does not exist.*model\.pretrained"):
        resolve_pretrained(str(missing), "resnet18")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="Could not read pretrained weights from .*garbage"):
        resolve_pretrained(garbage, "resnet18")
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(CheckpointError, match="does not hold a state dict.*Tensor"):
        resolve_pretrained(tensor_file, "resnet18")


def test_download_failure_explains_offline_fix():
    with pytest.raises(CheckpointError) as info:
        TwoStreamNet(5, backbone="resnet18", pretrained=True)
    msg = str(info.value)
    assert "Downloading the ImageNet weights for resnet18" in msg and "failed" in msg
    assert "resnet18-f37072fd.pth" in msg and "model.pretrained=" in msg
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_resolve_without_weights_and_bad_values():
    assert resolve_pretrained(False, "resnet50") is None
    assert resolve_pretrained(None, "resnet50") is None
    with pytest.raises(ValueError, match="true, false or a path"):
        resolve_pretrained(3, "resnet18")
    assert weights_file_name("resnet50") == "resnet50-0676ba61.pth"
    assert weights_file_name("resnet34") == "resnet34-b627a593.pth"
