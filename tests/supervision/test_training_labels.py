"""The labels training reads under supervision=full|noisy|weak, and what a resume may restore."""

from __future__ import annotations

import numpy as np
import pytest

from tskd.core.errors import CheckpointError, DatasetError
from tskd.core.schema import build
from tskd.data.samplers import CrossModalityIdentitySampler
from tskd.models.schedule import lr_factor, stage
from tskd.supervision.config import SupervisionConfig
from tskd.supervision.label_files import write_noise_files
from tskd.supervision.labels import UNLABELLED, training_labels
from tskd.supervision.noise import draw_noise

# 6 identities, 5 visible and 4 infrared images each
VIS = np.repeat(np.arange(6), 5)
IR = np.repeat(np.arange(6), 4)


def sup(name="full", **kw):
    base = {"name": name, "label_noise": 0.0, "noise_seed": 0, "noise_file": None,
            "robust_triplet": False, "label_ratio": 1.0, "label_split": "per_identity",
            "label_seed": 0, "pretrain_epochs": 0, "pretrain_lr_factor": 0.01,
            "refresh_every": 1, "labelled_weight_one": False, "plot_epochs": []}
    return build(SupervisionConfig, {**base, **kw})  # typed, unchecked: bad values reach the code


def labels_for(s, tmp_path, **kw):
    return training_labels(s, VIS, IR, dataset="sysu", trial=None, cache_dir=tmp_path, **kw)


def test_full_is_the_truth_and_a_copy(tmp_path):
    lab = labels_for(sup(), tmp_path)
    assert np.array_equal(lab.visible, VIS) and np.array_equal(lab.infrared, IR)
    lab.visible[0] = 5  # training's array is not the truth's
    assert lab.truth.visible[0] == 0 and not lab.needs_pairing


def test_noisy_trains_on_the_seeded_draw(tmp_path):
    lab = labels_for(sup("noisy", label_noise=0.5, noise_seed=3), tmp_path)
    ref = draw_noise(VIS, IR, 0.5, 3, every_identity_survives=False)
    assert np.array_equal(lab.visible, ref.visible) and np.array_equal(lab.infrared, ref.infrared)
    # exactly ceil(0.5 * N) labels changed per modality: 15 of 30, 12 of 24
    assert (lab.visible != VIS).sum() == 15 and (lab.infrared != IR).sum() == 12
    assert lab.realised_noise() == (0.5, 0.5)
    assert np.array_equal(lab.truth.visible, VIS)


def test_weak_keeps_truth_at_labelled_rows_only(tmp_path):
    lab = labels_for(sup("weak", label_ratio=0.2), tmp_path)
    # per identity round(0.2 * 5) = 1 visible, round(0.2 * 4) = 1 infrared
    assert (lab.visible != UNLABELLED).sum() == 6 and (lab.infrared != UNLABELLED).sum() == 6
    known = lab.visible != UNLABELLED
    assert np.array_equal(lab.visible[known], VIS[known])
    assert np.array_equal(np.flatnonzero(~known), lab.unlabelled(0))


def test_pseudo_labels_are_written_at_unlabelled_rows_only(tmp_path):
    lab = labels_for(sup("weak", label_ratio=0.2), tmp_path)
    labelled = np.flatnonzero(lab.visible != UNLABELLED)
    wrong = np.full_like(VIS, 5)  # a network that predicts 5 everywhere
    lab.set_pseudo_labels(wrong, np.full_like(IR, 4), epoch=7)
    assert np.array_equal(lab.visible[labelled], VIS[labelled])  # ground truth kept
    assert (lab.visible[lab.unlabelled(0)] == 5).all()
    assert (lab.infrared[lab.unlabelled(1)] == 4).all() and lab.pseudo_epoch == 7


def test_noise_file_with_another_rate_is_refused(tmp_path):
    draw = draw_noise(VIS, IR, 0.2, 0, every_identity_survives=False)
    prefix = tmp_path / "files" / "0.2_sym"
    write_noise_files(draw, VIS, IR, prefix)
    read = labels_for(sup("noisy", label_noise=0.2, noise_file=str(prefix)), tmp_path)
    assert np.array_equal(read.visible, draw.visible)  # the file's labels, exactly
    with pytest.raises(DatasetError, match=r"replaces 6 of 30 visible labels.*"
                                           r"supervision.label_noise=0.5.*set supervision."
                                           r"label_noise to the file's rate"):
        labels_for(sup("noisy", label_noise=0.5, noise_file=str(prefix)), tmp_path)


def test_resume_restores_pseudo_labels_and_refuses_another_draw(tmp_path):
    run = labels_for(sup("weak", label_ratio=0.2), tmp_path)
    run.set_pseudo_labels(np.full_like(VIS, 2), np.full_like(IR, 3), epoch=4)
    state = run.state_dict()
    again = labels_for(sup("weak", label_ratio=0.2), tmp_path)
    again.load_state_dict(state)
    assert np.array_equal(again.visible, run.visible) and again.pseudo_epoch == 4
    other = labels_for(sup("weak", label_ratio=0.2, label_seed=1), tmp_path)
    with pytest.raises(CheckpointError, match="another labelled split.*label_seed"):
        other.load_state_dict(state)
    noisy = labels_for(sup("noisy", label_noise=0.2), tmp_path).state_dict()
    with pytest.raises(CheckpointError, match="another noise draw.*noise_seed"):
        labels_for(sup("noisy", label_noise=0.2, noise_seed=9), tmp_path).load_state_dict(noisy)
    with pytest.raises(CheckpointError, match="supervision=noisy but this run uses "
                                              "supervision=weak"):
        labels_for(sup("weak", label_ratio=0.2), tmp_path).load_state_dict(noisy)


# ------------------------------------------------------------------------------ sampler
def test_paired_sampler_skips_unlabelled_rows_and_unpaired_ids():
    vis = VIS.copy()
    ir = IR.copy()
    vis[vis == 2] = UNLABELLED  # identity 2 has no visible label: never drawn
    ir[:2] = UNLABELLED
    s = CrossModalityIdentitySampler(vis, ir, num_ids=2, num_pos=3, seed=0, paired_only=True)
    stream = s.global_stream(0)
    assert (vis[stream[..., 0]] == ir[stream[..., 1]]).all()  # aligned by the current label
    assert (vis[stream[..., 0]] != 2).all() and (vis[stream[..., 0]] >= 0).all()
    assert not np.isin(stream[..., 1], [0, 1]).any()
    assert len(s) == (len(vis) - 5) // 6 + 1  # epoch length from the labelled rows


def test_paired_sampler_equals_the_plain_one_when_every_id_is_paired():
    plain = CrossModalityIdentitySampler(VIS, IR, num_ids=3, num_pos=2, seed=5)
    paired = CrossModalityIdentitySampler(VIS, IR, num_ids=3, num_pos=2, seed=5,
                                          paired_only=True)
    assert np.array_equal(plain.global_stream(2), paired.global_stream(2))


def test_paired_sampler_names_the_fix_when_too_few_ids_remain():
    vis = np.where(VIS < 4, UNLABELLED, VIS)
    with pytest.raises(DatasetError, match="only 2 identities.*supervision.label_ratio"):
        CrossModalityIdentitySampler(vis, IR, num_ids=3, num_pos=2, paired_only=True)


# ----------------------------------------------------------------------------- schedule
def test_pretraining_comes_before_the_main_schedule():
    assert [stage(e, 1, 3, pretrain_epochs=2) for e in range(6)] == \
        ["pretrain", "pretrain", "warmup", "I", "I", "II"]  # main epochs 0, 1, 2, 3
    assert stage(4, 1, 3) == "II"  # no pre-training: unchanged
    assert lr_factor(0, 2, (5,), 0.1) == 0.5  # the main schedule itself is unchanged
