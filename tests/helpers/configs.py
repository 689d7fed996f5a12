"""Typed config objects for tests that build a datamodule or module directly.

Values come from the YAML (the one place a default lives) with the test's own ``fields`` on top;
they are built without the range checks, so a test may use images smaller than a run allows.
(No name here starts with ``test``: a test module importing it would collect it.)
"""

from __future__ import annotations

from tskd.config import (
    DataConfig,
    DatasetConfig,
    EvalDataConfig,
    EvalPassOptions,
    LossConfig,
    ModelConfig,
    OptimConfig,
    SupervisionConfig,
    yaml_values,
)
from tskd.core.schema import build


def _merged(base: dict, fields: dict) -> dict:
    out = dict(base)
    for k, v in fields.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dataset(option: str = "sysu", **fields) -> DatasetConfig:
    """configs/dataset/<option>.yaml (its ``root`` interpolates: give ``root=``)."""
    return build(DatasetConfig, _merged(yaml_values(f"dataset/{option}.yaml"), fields))


def data(**fields) -> DataConfig:
    return build(DataConfig, _merged(yaml_values("train.yaml", "data"), fields))


def loader_data(**fields) -> EvalDataConfig:
    return build(EvalDataConfig, _merged(yaml_values("eval.yaml", "data"), fields))


def model(**fields) -> ModelConfig:
    return build(ModelConfig, _merged(yaml_values("model/tskd.yaml"), fields))


def loss(**fields) -> LossConfig:
    return build(LossConfig, _merged(yaml_values("loss/tskd.yaml"), fields))


def optim(**fields) -> OptimConfig:
    return build(OptimConfig, _merged(yaml_values("train.yaml", "optim"), fields))


def eval_options(**fields) -> EvalPassOptions:
    return build(EvalPassOptions, _merged(yaml_values("train.yaml", "eval"), fields))


def supervision(**fields) -> SupervisionConfig:
    """configs/supervision/full.yaml with ``fields`` on top."""
    return build(SupervisionConfig, _merged(yaml_values("supervision/full.yaml"), fields))
