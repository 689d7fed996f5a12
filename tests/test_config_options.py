"""Every option of every config group, and every experiment, composes and passes the schema.

The options are globbed from configs/, so a new YAML file is covered without editing this test;
a key in it that no schema knows, or a value out of range, fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tskd.apps.visualize import VisualizeConfig
from tskd.config import EvalConfig, TrainConfig, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TOP = ("train.yaml", "eval.yaml", "visualize.yaml")
# Groups eval.yaml (and visualize.yaml) select from; the others are training's.
EVAL_GROUPS = ("dataset", "model", "mode", "trainer", "paths", "hydra")


def _options() -> list[tuple[str, str]]:
    found = sorted((p.parent.name, p.stem) for p in CONFIGS.glob("*/*.yaml"))
    assert {g for g, _ in found} >= {"dataset", "model", "loss", "supervision", "mode",
                                     "trainer", "logger", "callbacks", "experiment"}
    return found


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.mark.parametrize("group,option", _options(), ids="{0[0]}={0[1]}".format)
def test_every_option_passes_the_training_schema(group, option, tmp_path):
    c = validate(_compose("train", [f"{group}={option}", f"paths.output_dir={tmp_path}"]),
                 TrainConfig)
    assert isinstance(c, TrainConfig)
    if group == "supervision":
        assert c.supervision.name == option


@pytest.mark.parametrize("group,option", [o for o in _options() if o[0] in EVAL_GROUPS],
                         ids="{0[0]}={0[1]}".format)
@pytest.mark.parametrize("name,schema", [("eval", EvalConfig), ("visualize", VisualizeConfig)])
def test_every_option_passes_the_evaluation_schemas(group, option, name, schema, tmp_path):
    c = validate(_compose(name, [f"{group}={option}", "ckpt=any.ckpt",
                                 f"paths.output_dir={tmp_path}"]), schema)
    assert isinstance(c, schema)


def test_every_top_level_config_has_its_schema_in_the_config_store(tmp_path):
    """The ConfigStore entries are Hydra-compatible schemas of the shipped configs."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(TOP)
    store = ConfigStore.instance()
    for top in TOP:
        name = top.removesuffix(".yaml")
        schema = store.load(f"schema_{name}.yaml").node
        cfg = _compose(name, ["ckpt=any.ckpt", f"paths.output_dir={tmp_path}"])
        merged = OmegaConf.merge(schema, cfg)  # Hydra's own type and key checks agree
        assert OmegaConf.to_container(merged, resolve=True) == \
            OmegaConf.to_container(cfg, resolve=True)
