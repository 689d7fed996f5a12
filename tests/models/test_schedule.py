"""The lr schedule and stage switch of docs/method.md, against hand-written tables."""

import pytest

from tskd.models.schedule import lr_factor, stage


@pytest.mark.parametrize("epoch, factor", [
    (0, 0.1), (4, 0.5), (9, 1.0), (10, 1.0), (19, 1.0), (20, 0.1), (39, 0.1), (40, 0.01),
    (79, 0.01),
])
def test_lr_factor_paper_schedule(epoch, factor):
    assert lr_factor(epoch) == pytest.approx(factor)


def test_lr_factor_custom_schedule():
    assert [lr_factor(e, 2, (7, 9), 0.1) for e in range(10)] == pytest.approx(
        [0.5, 1, 1, 1, 1, 1, 1, 0.1, 0.1, 0.01])


def test_stage_switches():
    assert [stage(e, 1, 10) for e in (0, 1, 9, 10, 79)] == ["warmup", "I", "I", "II", "II"]
    assert [stage(e, 2, 3) for e in (0, 1, 2, 3)] == ["warmup", "warmup", "I", "II"]
