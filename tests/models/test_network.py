"""Tests of TwoStreamNet: shapes, modality routing, embeddings, training pass, param groups."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tskd.models.components import TwoStreamNet

H, W = 64, 32


@pytest.fixture(scope="module")
def net() -> TwoStreamNet:
    torch.manual_seed(0)
    return TwoStreamNet(7, backbone="resnet18").eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 3, H, W)


@pytest.mark.parametrize("modality", [0, 1])
def test_resnet18_output_shapes_and_unit_norm(net, images, modality):
    with torch.no_grad():
        fc = net(images, modality)
    assert fc.shape == (4, 512) and net.feat_dim == 512 and net.num_classes == 7
    torch.testing.assert_close(fc.norm(dim=1), torch.ones(4))


def test_resnet50_shapes_one_pass():
    torch.manual_seed(2)
    model = TwoStreamNet(5, backbone="resnet50")
    assert model.feat_dim == 2048
    f, logits = model.forward_train(torch.randn(4, 3, H, W), torch.randn(2, 3, H, W))
    assert f.shape == (6, 2048) and logits.shape == (6, 5)


def test_stems_start_equal_but_are_separate_weights():
    fresh = TwoStreamNet(7, backbone="resnet18")
    vis, ir = fresh.backbone.visible_stem, fresh.backbone.infrared_stem
    assert torch.equal(vis.conv1.weight, ir.conv1.weight)
    assert vis.conv1.weight.data_ptr() != ir.conv1.weight.data_ptr()


def test_stems_make_the_modalities_differ(net, images):
    net = copy.deepcopy(net)
    with torch.no_grad():
        net.backbone.infrared_stem.conv1.weight.mul_(1.5).add_(0.01)  # as after some training
        vis, ir = net(images, 0), net(images, 1)
        assert (vis - ir).abs().max() > 1e-3
        twin = TwoStreamNet(7, backbone="resnet18").eval()
        twin.load_state_dict(net.state_dict())
        twin.backbone.infrared_stem.load_state_dict(twin.backbone.visible_stem.state_dict())
        # With equal stems the two modalities coincide: the stem is the only difference.
        torch.testing.assert_close(twin(images, 1), twin(images, 0))


def test_mixed_modality_batch_equals_separate_passes(net, images):
    modality = torch.tensor([1, 0, 0, 1])
    with torch.no_grad():
        mixed = net(images, modality)
        vis, ir = net(images, 0), net(images, 1)
    expected = torch.where(modality[:, None] == 0, vis, ir)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)
    # A 0-dim tensor works like an int.
    torch.testing.assert_close(net(images, torch.tensor(1)), ir)


def test_extract_fc_equals_forward_and_both_unit_norm(net, images):
    with torch.no_grad():
        pool, fc = net.extract(images, 1)
        f = net.pooled(images, 1)
    torch.testing.assert_close(fc, net(images, 1))
    torch.testing.assert_close(pool, F.normalize(f, dim=1))
    torch.testing.assert_close(pool.norm(dim=1), torch.ones(4))
    assert not torch.allclose(pool, fc)  # the BN-neck does change the feature


def test_forward_train_order_and_logits(net, images):
    x_vis, x_ir = images, images[:2].flip(3)
    with torch.no_grad():
        f, logits = net.forward_train(x_vis, x_ir)
        expected_f = torch.cat([net.pooled(x_vis, 0), net.pooled(x_ir, 1)])
        expected_logits = net.head.classifier(net.head.bnneck(f))
        classified = net.classify(x_ir, 1)
    assert f.shape == (6, 512) and logits.shape == (6, 7)
    torch.testing.assert_close(f, expected_f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(classified, logits[4:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="share channels and size"):
        net.forward_train(x_vis, torch.randn(2, 3, H, W + 8))


def test_forward_train_backward_reaches_both_stems():
    torch.manual_seed(3)
    model = TwoStreamNet(4, backbone="resnet18")
    f, logits = model.forward_train(torch.randn(4, 3, H, W), torch.randn(2, 3, H, W))
    (F.cross_entropy(logits, torch.tensor([0, 1, 0, 1, 2, 3])) + f.mean()).backward()
    for p in model.backbone_parameters():
        assert p.grad is not None
    assert model.backbone.visible_stem.conv1.weight.grad.abs().sum() > 0
    assert model.backbone.infrared_stem.conv1.weight.grad.abs().sum() > 0


def test_param_groups_partition_trainable_params(net):
    backbone = list(net.backbone_parameters())
    head = list(net.head_parameters())
    ids_b, ids_h = {id(p) for p in backbone}, {id(p) for p in head}
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert ids_b.isdisjoint(ids_h) and ids_b | ids_h == trainable
    assert len(backbone) + len(head) == len(trainable)
    assert ids_h == {id(net.head.bnneck.weight), id(net.head.classifier.weight)}
    assert id(net.backbone.nl_layer3["1"].theta.weight) in ids_b


def test_config_records_constructor_args_as_primitives(tmp_path):
    model = TwoStreamNet(3, backbone="resnet18", non_local=False, nl_inter_channels=None)
    assert model.config == {
        "num_classes": 3,
        "backbone": "resnet18",
        "pretrained": False,
        "last_stride": 1,
        "non_local": False,
        "nl_inter_channels": None,
        "gem_p": 3.0,
    }
    rebuilt = TwoStreamNet(**model.config)
    rebuilt.load_state_dict(model.state_dict())  # same architecture, strict load


def test_non_local_blocks_leave_the_initial_output_unchanged(images):
    torch.manual_seed(4)
    plain = TwoStreamNet(7, backbone="resnet18", non_local=False).eval()
    with_nl = TwoStreamNet(7, backbone="resnet18", non_local=True).eval()
    result = with_nl.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all("nl_layer" in k for k in result.missing_keys)
    with torch.no_grad():
        torch.testing.assert_close(with_nl(images, 0), plain(images, 0))


def test_channels_last_matches_contiguous(images):
    torch.manual_seed(5)
    model = TwoStreamNet(7, backbone="resnet18").eval()
    with torch.no_grad():
        ref = model.extract(images, torch.tensor([0, 1, 0, 1]))
        model = model.to(memory_format=torch.channels_last)
        x_cl = images.contiguous(memory_format=torch.channels_last)
        out = model.extract(x_cl, torch.tensor([0, 1, 0, 1]))
        f, _ = model.forward_train(x_cl, x_cl[:2])
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert f.shape == (6, 512)


def test_invalid_modality_is_rejected(net, images):
    with pytest.raises(ValueError, match=r"modality must be 0 \(visible\) or 1"):
        net(images, 2)
    with pytest.raises(ValueError, match=r"got \[3\]"):
        net(images, torch.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="3 entries for a batch of 4"):
        net(images, torch.tensor([0, 1, 1]))
