"""DART's noise draw: counts, never the true label, per-modality identities and streams, seeds,
RegDB's every-identity-survives rule, the statistics of the draw, the key and the cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tskd.core.errors import DatasetError, InputError
from tskd.supervision import noise as noise_module
from tskd.supervision.label_files import noise_file_paths
from tskd.supervision.noise import NoiseDraw, cached_noise, draw_noise, noise_key

# chi-square 0.999 quantiles (scipy.stats.chi2.ppf(0.999, df)), hard-coded to need no scipy
CHI2_999 = {3: 16.266, 99: 148.230}


def _labels(n_ids: int, seed: int, low: int = 1, high: int = 8) -> np.ndarray:
    """Shuffled labels 0..n_ids-1 with uneven counts per identity."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.concatenate([[i] * int(rng.integers(low, high))
                                           for i in range(n_ids)])).astype(np.int64)


VIS = _labels(10, 0)                      # identities 0..9
IR = _labels(9, 1) + 1                    # identities 1..9: no infrared image of identity 0


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


# counts worked by hand: ceil(0.2*37)=ceil(7.4)=8, ceil(0.5*37)=19, ceil(0.07*100)=7 (float
# arithmetic says 7.000000000000001, whose ceil would be 8), ceil(1*23)=23
@pytest.mark.parametrize(("rate", "n", "k"), [(0.2, 37, 8), (0.5, 37, 19), (0.2, 23, 5),
                                             (0.07, 100, 7), (1.0, 23, 23), (0.01, 23, 1)])
def test_exactly_ceil_rate_n_rows_get_a_new_label(rate, n, k):
    true = np.arange(n) % 4
    draw = draw_noise(true, true[:10], rate, 3, every_identity_survives=False)
    assert draw.visible_noisy.size == k
    assert int((draw.visible != true).sum()) == k  # counted from the labels themselves
    np.testing.assert_array_equal(draw.visible_noisy, np.flatnonzero(draw.visible != true))


@pytest.mark.parametrize(("rate", "n"), [(0.2, 22258), (0.5, 22258), (0.2, 11909),
                                         (0.5, 11909), (0.2, 2060), (0.5, 2060)])
def test_counts_agree_with_darts_float_formula_on_sysu_and_regdb(rate, n):
    true = np.arange(n) % 7
    draw = draw_noise(true, true, rate, 0, every_identity_survives=False)
    assert draw.visible_noisy.size == int(np.ceil(rate * n))  # DART's own expression


@pytest.mark.parametrize("seed", range(5))
def test_never_the_true_label_only_identities_of_that_modality(seed):
    draw = draw_noise(VIS, IR, 0.5, seed, every_identity_survives=False)
    for labels, true, noisy, clean in ((draw.visible, VIS, draw.visible_noisy,
                                        draw.visible_clean),
                                       (draw.infrared, IR, draw.infrared_noisy,
                                        draw.infrared_clean)):
        assert (labels[noisy] != true[noisy]).all()
        np.testing.assert_array_equal(labels[clean], true[clean])
        assert set(labels.tolist()) <= set(true.tolist())
        assert labels.dtype == np.int64 and noisy.dtype == np.int64
        assert (np.diff(noisy) > 0).all()
        np.testing.assert_array_equal(np.sort(np.concatenate([noisy, clean])),
                                      np.arange(true.size))
    assert 0 not in draw.infrared  # identity 0 has no infrared image: never a noisy ir label


def test_modalities_are_independent():
    base = draw_noise(VIS, IR, 0.3, 11, every_identity_survives=True)
    new_vis, new_ir = _labels(14, 9), _labels(12, 5)
    assert new_vis.size != VIS.size and new_ir.size != IR.size  # another count of noisy rows
    other_ir = draw_noise(VIS, new_ir, 0.3, 11, every_identity_survives=True)
    other_vis = draw_noise(new_vis, IR, 0.3, 11, every_identity_survives=True)
    np.testing.assert_array_equal(base.visible, other_ir.visible)
    np.testing.assert_array_equal(base.visible_noisy, other_ir.visible_noisy)
    np.testing.assert_array_equal(base.infrared, other_vis.infrared)
    np.testing.assert_array_equal(base.infrared_noisy, other_vis.infrared_noisy)


def test_same_seed_same_draw_other_seed_other_draw():
    a = draw_noise(VIS, IR, 0.2, 7, every_identity_survives=False)
    assert a.same_as(draw_noise(VIS, IR, 0.2, 7, every_identity_survives=False))
    others = [draw_noise(VIS, IR, 0.2, s, every_identity_survives=False) for s in range(8, 14)]
    assert not any(a.same_as(o) for o in others)
    assert len({tuple(o.visible_noisy) for o in others}) > 1


def test_rate_zero_keeps_every_label_and_inputs_are_never_modified():
    vis, ir = VIS.copy(), IR.copy()
    draw = draw_noise(vis, ir, 0.0, 0, every_identity_survives=True)
    np.testing.assert_array_equal(draw.visible, VIS)
    np.testing.assert_array_equal(draw.infrared, IR)
    assert draw.visible_noisy.size == draw.infrared_noisy.size == 0
    assert draw.realised_rates() == {"visible": 0.0, "infrared": 0.0}
    draw_noise(vis, ir, 0.5, 0, every_identity_survives=True)
    np.testing.assert_array_equal(vis, VIS)  # the caller's (and the test lists') labels stay
    np.testing.assert_array_equal(ir, IR)


def test_realised_rates_and_accessors():
    draw = draw_noise(VIS, IR, 0.2, 1, every_identity_survives=False)
    assert draw.realised_rates() == {"visible": np.ceil(0.2 * VIS.size) / VIS.size,
                                     "infrared": np.ceil(0.2 * IR.size) / IR.size}
    assert draw.noisy("infrared") is draw.infrared_noisy
    np.testing.assert_array_equal(draw.clean("visible"), draw.visible_clean)
    with pytest.raises(InputError, match="modality must be one of"):
        draw.labels("thermal")


# identity 0 owns one visible image; at 60 % its image is often relabelled and, with few noisy
# rows landing on it, label 0 then disappears from the modality
SMALL = np.array([0, 1, 1, 1, 2, 2, 2, 3, 3, 3], dtype=np.int64)


def test_regdb_rule_every_identity_survives_where_a_naive_draw_loses_one():
    lost = 0
    for seed in range(60):
        naive = draw_noise(SMALL, SMALL, 0.6, seed, every_identity_survives=False)
        ruled = draw_noise(SMALL, SMALL, 0.6, seed, every_identity_survives=True)
        naive_ok = all(set(lab.tolist()) == {0, 1, 2, 3}
                       for lab in (naive.visible, naive.infrared))
        lost += not naive_ok
        for labels, noisy in ((ruled.visible, ruled.visible_noisy),
                              (ruled.infrared, ruled.infrared_noisy)):
            assert set(labels.tolist()) == {0, 1, 2, 3}
            assert noisy.size == 6 and (labels[noisy] != SMALL[noisy]).all()
        if naive_ok:  # the rule only redraws a draw that lost an identity
            assert ruled.same_as(naive)
    assert lost >= 5  # the case is a real test of the rule


def test_regdb_rule_gives_up_clearly_when_unreachable():
    singles = np.arange(40)  # 40 identities, one image each, all relabelled: ~never all survive
    with pytest.raises(DatasetError, match=r"visible: no noise draw at rate 1.0 keeps every one "
                                           r"of the 40 identities .* after 3 tries .* lower "
                                           r"supervision.label_noise"):
        draw_noise(singles, singles, 1.0, 0, every_identity_survives=True, max_tries=3)
    draw_noise(singles, singles, 1.0, 0, every_identity_survives=False)  # fine without the rule


def test_a_modality_with_one_identity_cannot_be_corrupted():
    with pytest.raises(DatasetError, match="infrared training labels hold a single identity"):
        draw_noise(VIS, np.full(5, 3), 0.2, 0, every_identity_survives=False)
    draw_noise(VIS, np.full(5, 3), 0.0, 0, every_identity_survives=False)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"rate": -0.1}, r"lie in \[0, 1\]"), ({"rate": 1.5}, r"lie in \[0, 1\]"),
    ({"rate": float("nan")}, r"lie in \[0, 1\]"), ({"rate": "0.2"}, "must be a number"),
    ({"seed": -1}, "noise seed must be a non-negative integer"),
    ({"seed": 1.5}, "noise seed must be a non-negative integer"),
    ({"visible_true": np.zeros((2, 3), int)}, "1-D list of labels"),
    ({"visible_true": np.array([0.0, 1.0])}, "non-negative integer labels"),
    ({"infrared_true": np.array([0, -1])}, "non-negative integer labels"),
])
def test_bad_arguments_are_refused(kwargs, match):
    args = {"visible_true": VIS, "infrared_true": IR, "rate": 0.2, "seed": 0} | kwargs
    with pytest.raises(InputError, match=match):
        draw_noise(**args, every_identity_survives=False)


def test_replacement_label_is_uniform_over_the_other_identities():
    true = np.repeat(np.arange(5), 20)
    pairs = np.zeros((5, 5), dtype=np.int64)  # (true identity, new label) over 200 seeds
    for seed in range(200):
        draw = draw_noise(true, true, 0.5, seed, every_identity_survives=False)
        rows = draw.visible_noisy
        np.add.at(pairs, (true[rows], draw.visible[rows]), 1)
    assert np.diag(pairs).sum() == 0
    for identity in range(5):
        others = np.delete(pairs[identity], identity)  # 4 cells, 3 degrees of freedom
        assert _chi2(others) < CHI2_999[3], pairs


def test_noisy_rows_are_uniform_over_rows():
    true = np.repeat(np.arange(5), 20)
    hits = np.zeros(100, dtype=np.int64)
    for seed in range(200):
        hits[draw_noise(true, true, 0.3, seed, every_identity_survives=False).infrared_noisy] += 1
    assert hits.sum() == 200 * 30
    assert _chi2(hits) < CHI2_999[99]


def test_noise_key_covers_everything_the_draw_depends_on():
    key = noise_key("regdb", 1, 0.2, 0, VIS, IR)
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == noise_key("regdb", 1, 0.2, 0, VIS.astype(np.int32), list(IR))
    changed = [noise_key("sysu", 1, 0.2, 0, VIS, IR), noise_key("regdb", 2, 0.2, 0, VIS, IR),
               noise_key("regdb", None, 0.2, 0, VIS, IR), noise_key("regdb", 1, 0.5, 0, VIS, IR),
               noise_key("regdb", 1, 0.2, 1, VIS, IR),
               noise_key("regdb", 1, 0.2, 0, VIS, IR, every_identity_survives=True),
               noise_key("regdb", 1, 0.2, 0, np.roll(VIS, 1), IR),
               noise_key("regdb", 1, 0.2, 0, VIS, IR[:-1]),
               noise_key("regdb", 1, 0.2, 0, IR, VIS)]
    assert len(set(changed) | {key}) == len(changed) + 1


def test_cached_noise_draws_once_then_reuses(tmp_path, monkeypatch):
    first = cached_noise(tmp_path, "regdb", 3, VIS, IR, 0.2, 5, every_identity_survives=True)
    assert first.same_as(draw_noise(VIS, IR, 0.2, 5, every_identity_survives=True))
    key = noise_key("regdb", 3, 0.2, 5, VIS, IR, every_identity_survives=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 8 and all(key in n and n.startswith("regdb_trial3_") for n in names)

    def no_draw(*args, **kwargs):
        raise AssertionError("drew again instead of reusing the cache")
    monkeypatch.setattr(noise_module, "draw_noise", no_draw)
    again = cached_noise(tmp_path, "regdb", 3, VIS, IR, 0.2, 5, every_identity_survives=True)
    assert again.same_as(first)


def test_cached_noise_redraws_an_unusable_cache_and_rewrites_it(tmp_path, caplog):
    first = cached_noise(tmp_path, "sysu", None, VIS, IR, 0.5, 2, every_identity_survives=False)
    key = noise_key("sysu", None, 0.5, 2, VIS, IR)
    paths = noise_file_paths(noise_module.cache_prefix(tmp_path, "sysu", None, 0.5, 2, key))
    assert sorted(p.name for p in paths.values()) == sorted(p.name for p in tmp_path.iterdir())
    np.save(paths["visible", "true"], np.roll(VIS, 1))  # stored true labels no longer match
    paths["infrared", "noisy"].write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING):
        again = cached_noise(tmp_path, "sysu", None, VIS, IR, 0.5, 2,
                             every_identity_survives=False)
    assert again.same_as(first)
    assert "redrawing label noise" in caplog.text
    np.testing.assert_array_equal(np.load(paths["visible", "true"]), VIS)
    np.testing.assert_array_equal(np.load(paths["infrared", "noisy"]), first.infrared_noisy)


def test_cached_noise_at_rate_zero_stores_nothing(tmp_path):
    draw = cached_noise(tmp_path, "sysu", None, VIS, IR, 0.0, 0, every_identity_survives=False)
    assert isinstance(draw, NoiseDraw) and draw.visible_noisy.size == 0
    assert list(tmp_path.iterdir()) == []
