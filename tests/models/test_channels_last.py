"""channels_last reaches every forward of the network: training step, per-epoch passes, test."""

from __future__ import annotations

import torch

from tskd.losses import PrototypeBank
from tskd.models.components import TwoStreamNet
from tskd.models.epoch_passes import accumulate_prototypes, augmented_losses


def _nets() -> tuple[TwoStreamNet, TwoStreamNet]:
    torch.manual_seed(0)
    plain = TwoStreamNet(4, backbone="resnet18", pretrained=False)
    fast = TwoStreamNet(4, backbone="resnet18", pretrained=False)
    fast.load_state_dict(plain.state_dict())
    return plain, fast.use_channels_last()


def _record_stem_formats(net: TwoStreamNet) -> list[bool]:
    """Whether each input the two stems received was channels-last."""
    seen: list[bool] = []
    for stem in (net.backbone.visible_stem, net.backbone.infrared_stem):
        stem.register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    return seen


def test_the_passes_and_the_test_features_get_the_networks_format_and_the_same_values():
    plain, fast = _nets()
    seen = _record_stem_formats(fast)
    g = torch.Generator().manual_seed(1)
    v1, v2, ir = (torch.randn(4, 3, 32, 16, generator=g) for _ in range(3))  # NCHW, as loaded
    labels, rows = torch.tensor([0, 1, 2, 3]), torch.arange(4)
    batches = [(v1, v2, ir, labels, labels, rows, rows)]
    got = augmented_losses(fast, batches, 4, 4)
    want = augmented_losses(plain, batches, 4, 4)
    assert seen and all(seen)  # the confidence pass fed channels-last inputs
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    seen.clear()
    banks = [PrototypeBank(4, num_slots=3, dim=plain.feat_dim) for _ in range(2)]
    ones = (torch.ones(4), torch.ones(4), torch.ones(4))
    for net, bank in zip((fast, plain), banks):
        accumulate_prototypes(net, [(v1, v2, ir, labels, rows, rows)], bank, ones)
    assert seen and all(seen)  # and so did the prototype pass
    torch.testing.assert_close(banks[0].wsum, banks[1].wsum, rtol=1e-3, atol=1e-4)  # kernels round
    seen.clear()
    fast.eval(), plain.eval()
    with torch.no_grad():
        for a, b in zip(fast.extract(v1, 0), plain.extract(v1, 0)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert seen == [True]  # the test features too
