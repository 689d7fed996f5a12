"""Unit tests of the network's parts: non-local block, GeM, BN-neck head, two-stream backbone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tskd.models.components.backbone import TwoStreamResNet
from tskd.models.components.head import BNNeckHead
from tskd.models.components.non_local import NonLocalBlock
from tskd.models.components.pooling import GeM


# ----------------------------------------------------------------------------- non-local
def test_non_local_is_identity_at_init_in_train_and_eval():
    torch.manual_seed(0)
    block = NonLocalBlock(8, inter_channels=1)
    x = torch.randn(2, 8, 5, 3)
    assert torch.equal(block.train()(x), x)
    assert torch.equal(block.eval()(x), x)


def test_non_local_affinity_and_output_on_hand_computed_tensor():
    block = NonLocalBlock(2, inter_channels=1).eval()
    with torch.no_grad():
        for conv, w in ((block.theta, [1.0, 0.0]), (block.phi, [0.0, 1.0]), (block.g, [1.0, 1.0])):
            conv.weight.copy_(torch.tensor(w).reshape(1, 2, 1, 1))
            conv.bias.zero_()
        block.proj[0].weight.fill_(1.0)
        block.proj[0].bias.zero_()
        bn = block.proj[1]
        bn.weight.fill_(1.0)
        bn.bias.zero_()
    # Two positions (H=1, W=2): channel 0 = [1, 2], channel 1 = [3, 4].
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    # θ = [1, 2], φ = [3, 4], N = 2 -> f = θᵀφ / 2 (no softmax).
    expected_f = torch.tensor([[1.5, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(block.affinity(x)[0], expected_f)
    # g = [4, 6] -> y = f g = [18, 36]; W copies y to both channels, BN(eval) divides by
    # sqrt(1 + eps); the input is added back.
    scale = 1.0 / math.sqrt(1.0 + bn.eps)
    expected = x + torch.tensor([18.0, 36.0]).reshape(1, 1, 1, 2) * scale
    torch.testing.assert_close(block(x), expected)


def test_non_local_associative_form_matches_explicit_product():
    torch.manual_seed(1)
    block = NonLocalBlock(6, inter_channels=3).eval()
    with torch.no_grad():
        block.proj[1].weight.normal_()
        block.proj[1].bias.normal_()
    x = torch.randn(2, 6, 4, 3)
    f = block.affinity(x)  # (B, N, N)
    g = block.g(x).flatten(2).transpose(1, 2)  # (B, N, C_i)
    y = (f @ g).transpose(1, 2).reshape(2, 3, 4, 3)
    torch.testing.assert_close(block(x), block.proj(y) + x, rtol=1e-5, atol=1e-5)
    # channels_last input gives the same result (no .view on non-contiguous memory).
    out_cl = block(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, block(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inter, expected", [(1, 1), (4, 4), (0, 8), (None, 8)])
def test_non_local_inter_channels(inter, expected):
    block = NonLocalBlock(16, inter_channels=inter)
    assert block.inter_channels == expected
    assert block.theta.out_channels == expected and block.proj[0].in_channels == expected


# ----------------------------------------------------------------------------------- GeM
def test_gem_matches_hand_computed_value():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    out = GeM(p=3.0)(x)
    assert out.shape == (1, 1)
    # ((1 + 8 + 27 + 64) / 4) ** (1/3) = 25 ** (1/3)
    assert out.item() == pytest.approx(25.0 ** (1.0 / 3.0), rel=1e-6)


def test_gem_p1_is_average_pooling_and_clamps_negatives():
    torch.manual_seed(2)
    x = torch.rand(3, 5, 4, 2)
    torch.testing.assert_close(GeM(p=1.0)(x), x.mean(dim=(2, 3)))
    neg = torch.full((1, 2, 2, 2), -5.0)
    torch.testing.assert_close(GeM(p=3.0, eps=1e-6)(neg), torch.full((1, 2), 1e-6))


def test_gem_is_fixed_by_default_and_safe_for_half_inputs():
    gem = GeM()
    assert list(gem.parameters()) == []
    assert len(list(GeM(learnable=True).parameters())) == 1
    # 100 ** 3 overflows float16; the pooling computes in float32.
    x = torch.full((1, 1, 2, 2), 100.0, dtype=torch.float16)
    out = gem(x)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(100.0, rel=1e-4)
    with pytest.raises(ValueError, match="p must be positive"):
        GeM(p=0.0)


# ------------------------------------------------------------------------------ BN-neck
def test_bnneck_bias_frozen_and_stays_zero_after_step():
    torch.manual_seed(3)
    head = BNNeckHead(16, 5)
    assert not head.bnneck.bias.requires_grad
    assert head.classifier.bias is None
    opt = torch.optim.SGD(
        [p for p in head.parameters() if p.requires_grad], lr=0.5, weight_decay=5e-4
    )
    before = head.bnneck.weight.detach().clone()
    f = torch.randn(8, 16)
    _, logits = head(f)
    F.cross_entropy(logits, torch.randint(0, 5, (8,))).backward()
    opt.step()
    assert torch.count_nonzero(head.bnneck.bias) == 0
    assert not torch.equal(head.bnneck.weight, before)  # the weight does train


def test_head_initialisation_statistics():
    torch.manual_seed(4)
    head = BNNeckHead(2048, 400)
    w = head.bnneck.weight.detach()
    assert abs(w.mean().item() - 1.0) < 2e-3 and abs(w.std().item() - 0.01) < 2e-3
    c = head.classifier.weight.detach()
    assert abs(c.mean().item()) < 1e-4 and abs(c.std().item() - 0.001) < 1e-4
    with pytest.raises(ValueError, match="num_classes"):
        BNNeckHead(16, 0)


# ----------------------------------------------------------------------------- backbone
def test_last_stride_one_keeps_18x9_map():
    net = TwoStreamResNet("resnet18", last_stride=1, non_local=False).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 288, 144), 0).shape == (1, 512, 18, 9)
        net2 = TwoStreamResNet("resnet18", last_stride=2, non_local=False).eval()
        assert net2(torch.randn(1, 3, 288, 144), 1).shape == (1, 512, 9, 5)


def test_non_local_placement_per_depth():
    r50 = TwoStreamResNet("resnet50")
    assert sorted(r50.nl_layer2) == ["2", "3"] and sorted(r50.nl_layer3) == ["3", "4", "5"]
    assert r50.nl_layer2["2"].in_channels == 512 and r50.nl_layer3["5"].in_channels == 1024
    # The Bottleneck keeps its stride in conv2 and the downsample conv: both set to 1.
    assert r50.layer4[0].conv2.stride == (1, 1) and r50.layer4[0].downsample[0].stride == (1, 1)
    r18 = TwoStreamResNet("resnet18")
    assert sorted(r18.nl_layer2) == ["0", "1"] and sorted(r18.nl_layer3) == ["0", "1"]
    assert r18.nl_layer3["1"].in_channels == 256
    off = TwoStreamResNet("resnet18", non_local=False)
    assert len(off.nl_layer2) == 0 and len(off.nl_layer3) == 0


def test_mixed_train_batch_keeps_stem_batchnorm_single_modality():
    torch.manual_seed(5)
    net = TwoStreamResNet("resnet18", non_local=False).train()
    x = torch.randn(6, 3, 32, 16)
    modality = torch.tensor([0, 1, 1, 0, 1, 0])
    net.stem(x, modality)
    ref = TwoStreamResNet("resnet18", non_local=False).train()
    ref.load_state_dict(net.state_dict())
    for bn in (ref.visible_stem.bn1, ref.infrared_stem.bn1):
        bn.reset_running_stats()
    ref.visible_stem(x[modality == 0])
    ref.infrared_stem(x[modality == 1])
    for name in ("visible_stem", "infrared_stem"):
        got, want = getattr(net, name).bn1, getattr(ref, name).bn1
        torch.testing.assert_close(got.running_mean, want.running_mean)
        torch.testing.assert_close(got.running_var, want.running_var)


def test_backbone_rejects_bad_arguments():
    with pytest.raises(ValueError, match="resnet101.*model.backbone"):
        TwoStreamResNet("resnet101")
    with pytest.raises(ValueError, match="last_stride"):
        TwoStreamResNet("resnet18", last_stride=3)
