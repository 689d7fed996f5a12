"""The project's Hydra configs composed in-process, as train.py and eval.py compose them."""

from __future__ import annotations

from helpers.entry_runs import REPO
from hydra import compose, initialize_config_dir

# A small model on small images, no downloads, no loader workers: an in-process run in seconds.
SMALL = ["model.backbone=resnet18", "model.pretrained=false", "dataset.img_h=64",
         "dataset.img_w=32", "data.num_workers=0", "data.test_batch_size=64"]


def compose_config(name: str, overrides: list[str]):
    """``configs/<name>.yaml`` with ``overrides``, unvalidated (what the entry point receives)."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(name, overrides=overrides)
