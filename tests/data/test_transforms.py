"""Tests of the training/test transforms: numbers, shapes, every augmentation case, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tskd.data.transforms import (
    ERASE_FILL,
    MEAN,
    STD,
    TrainTransform,
    channel_adaptive_gray,
    channel_exchange,
    channel_random_erasing,
    eval_transform,
    normalize_batch,
    pad_crop_flip,
    to_tensor,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _img(h=16, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_normalize_batch_numbers_and_layout():
    img = np.zeros((2, 4, 5, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 0, 128
    out = normalize_batch(img)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    for c in range(3):
        torch.testing.assert_close(out[:, c], torch.full((2, 4, 5), expected[c]))
    torch.testing.assert_close(normalize_batch(torch.from_numpy(img)), out)
    assert MEAN == (0.485, 0.456, 0.406) and STD == (0.229, 0.224, 0.225)


def test_to_tensor_and_eval_transform():
    img = _img()
    t = to_tensor(img)
    assert t.shape == (3, 16, 8) and t.dtype == torch.float32
    assert t[2, 5, 7].item() == pytest.approx(img[5, 7, 2] / 255)
    torch.testing.assert_close(eval_transform(img), normalize_batch(img[None])[0])


def _find_window(out, x, pad):
    """All (top, left, flipped) placements of ``out`` inside ``x`` zero-padded by ``pad``."""
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    h, w = out.shape[-2:]
    hits = []
    for top in range(padded.shape[1] - h + 1):
        for left in range(padded.shape[2] - w + 1):
            win = padded[:, top:top + h, left:left + w]
            for flipped, cand in ((False, win), (True, win.flip(-1))):
                if torch.equal(cand, out):
                    hits.append((top, left, flipped))
    return hits


def test_pad_crop_flip_is_a_window_of_the_padded_image():
    x = torch.from_numpy(_img()).permute(2, 0, 1).contiguous()  # uint8 (3, 16, 8)
    flips, offsets = set(), set()
    for seed in range(30):
        out = pad_crop_flip(x, 16, 8, _gen(seed), pad=3)
        assert out.shape == (3, 16, 8) and out.dtype == torch.uint8
        hits = _find_window(out, x, 3)
        assert hits, f"seed {seed}: output is not a (flipped) window of the padded image"
        flips.add(hits[0][2])
        offsets.add(hits[0][:2])
    assert flips == {False, True} and len(offsets) > 5
    torch.testing.assert_close(pad_crop_flip(x, 16, 8, _gen(7)), pad_crop_flip(x, 16, 8, _gen(7)))
    with pytest.raises(ValueError, match="dataset.img_h"):
        pad_crop_flip(x, 40, 8, _gen(0), pad=3)


def test_erasing_fill_area_and_aspect():
    x = torch.randn(3, 64, 32)
    torch.testing.assert_close(channel_random_erasing(x, _gen(0), p=0.0), x)
    fracs = []
    for seed in range(100):
        before = x.clone()
        out = channel_random_erasing(x, _gen(seed), p=1.0)
        torch.testing.assert_close(x, before)  # input untouched
        changed = (out != x).any(0)  # (H, W)
        rows, cols = changed.nonzero(as_tuple=True)
        assert len(rows) > 0
        h = int(rows.max() - rows.min() + 1)
        w = int(cols.max() - cols.min() + 1)
        assert changed.sum() == h * w  # one solid rectangle
        for c in range(3):
            region = out[c][changed]
            torch.testing.assert_close(region, torch.full_like(region, ERASE_FILL[c]))
        frac = h * w / (64 * 32)
        fracs.append(frac)
        # Rounding h and w to integers moves area/aspect slightly beyond the drawn values.
        assert 0.02 * 0.7 <= frac <= 0.4 * 1.15
        assert 0.3 * 0.7 <= h / w <= (1 / 0.3) * 1.4
    assert min(fracs) < 0.1 and max(fracs) > 0.3  # the whole range is used
    n_erased = sum(
        not torch.equal(channel_random_erasing(x, _gen(s), p=0.5), x) for s in range(200)
    )
    assert 70 <= n_erased <= 130


def test_erasing_gives_up_when_nothing_fits():
    x = torch.randn(3, 2, 2)
    # Area >= 90 % of a 2x2 image never fits strictly inside it: unchanged after 100 tries.
    torch.testing.assert_close(channel_random_erasing(x, _gen(0), p=1.0, area=(0.9, 0.99)), x)


def test_channel_exchange_copies_one_channel():
    x = torch.randn(3, 5, 4)
    picked = set()
    for seed in range(40):
        out = channel_exchange(x, _gen(seed))
        matches = [c for c in range(3) if all(torch.equal(out[k], x[c]) for k in range(3))]
        assert len(matches) == 1
        picked.add(matches[0])
    assert picked == {0, 1, 2}


def _gray_case(out, x):
    gray = 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    if torch.equal(out, x):
        return "unchanged"
    for name, ref in (("R", x[0]), ("G", x[1]), ("B", x[2]), ("gray", gray)):
        if all(torch.allclose(out[k], ref) for k in range(3)):
            return name
    raise AssertionError("output is none of the channel-adaptive gray cases")


def _gray_frequencies(draw: str, p: float, n: int) -> dict[str, float]:
    x = torch.randn(3, 6, 4)
    g = _gen(2024)  # one stream, as a loader worker draws them
    cases = [_gray_case(channel_adaptive_gray(x, g, p=p, draw=draw), x) for _ in range(n)]
    return {k: cases.count(k) / n for k in ("unchanged", "R", "G", "B", "gray")}


def test_caj_adaptive_gray_frequencies():
    """CAJ's draw: a channel copy 3/4 of the time, gray 1/8, unchanged 1/8 (within 1%)."""
    f = _gray_frequencies("caj", p=0.5, n=40_000)
    assert abs(f["R"] + f["G"] + f["B"] - 0.75) < 0.01, f
    assert abs(f["gray"] - 0.125) < 0.01 and abs(f["unchanged"] - 0.125) < 0.01, f
    assert all(abs(f[c] - 0.25) < 0.01 for c in "RGB"), f


def test_gated_adaptive_gray_frequencies():
    """The switch data.gray_draw=gated: unchanged 1/2, each of the four cases 1/8."""
    f = _gray_frequencies("gated", p=0.5, n=40_000)
    assert abs(f["unchanged"] - 0.5) < 0.01, f
    assert all(abs(f[c] - 0.125) < 0.01 for c in ("R", "G", "B", "gray")), f


def test_channel_adaptive_gray_probability_ends():
    x = torch.randn(3, 6, 4)
    # gated: p=0 never touches the image; p=1 always picks one of the four cases
    assert all(_gray_case(channel_adaptive_gray(x, _gen(s), p=0.0, draw="gated"), x)
               == "unchanged" for s in range(20))
    forced = [_gray_case(channel_adaptive_gray(x, _gen(s), p=1.0, draw="gated"), x)
              for s in range(200)]
    assert "unchanged" not in forced
    # caj: p only decides gray vs unchanged in the fourth case
    caj0 = {_gray_case(channel_adaptive_gray(x, _gen(s), p=0.0), x) for s in range(200)}
    caj1 = {_gray_case(channel_adaptive_gray(x, _gen(s), p=1.0), x) for s in range(200)}
    assert caj0 == {"R", "G", "B", "unchanged"} and caj1 == {"R", "G", "B", "gray"}
    with pytest.raises(ValueError, match="gray_draw='other'"):
        channel_adaptive_gray(x, _gen(0), draw="other")


def test_train_transform_shapes_determinism_and_views():
    vis, ir = _img(seed=1), _img(seed=2)
    t = TrainTransform(16, 8, pad=2)
    v1, v2, x_ir = t(vis, ir, _gen(11))
    for v in (v1, v2, x_ir):
        assert v.shape == (3, 16, 8) and v.dtype == torch.float32
    assert torch.equal(v2[0], v2[1]) and torch.equal(v2[1], v2[2])  # channel exchange
    again = t(vis, ir, _gen(11))
    assert all(torch.equal(a, b) for a, b in zip((v1, v2, x_ir), again))
    other = t(vis, ir, _gen(12))
    assert not all(torch.equal(a, b) for a, b in zip((v1, v2, x_ir), other))


def test_train_transform_switches_and_independent_views():
    vis, ir = _img(seed=1), _img(seed=2)
    plain = TrainTransform(16, 8, pad=0, erasing=False, channel_exchange=False,
                           adaptive_gray=False)
    nv, ni = eval_transform(vis), eval_transform(ir)
    flips = set()
    for seed in range(30):
        v1, v2, x_ir = plain(vis, ir, _gen(seed))
        # pad 0, crop = image size, no erasing: each view is the image or its mirror.
        f1, f2 = torch.equal(v1, nv.flip(-1)), torch.equal(v2, nv.flip(-1))
        assert f1 or torch.equal(v1, nv)
        assert f2 or torch.equal(v2, nv)
        assert torch.equal(x_ir, ni) or torch.equal(x_ir, ni.flip(-1))
        flips.add((f1, f2))
    assert len(flips) >= 3  # view 1 and view 2 flip independently
