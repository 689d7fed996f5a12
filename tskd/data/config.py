"""The schemas of the ``dataset`` and ``data`` config nodes, owned by the data layer.

They live here, not in :mod:`tskd.config`, so the datamodule can take them as typed arguments
without the data layer importing the model and loss layers (tests/test_import_graph.py);
:mod:`tskd.config` composes them into the run's schema. The values are in the YAML
(configs/dataset/*.yaml, ``data`` in configs/train.yaml and eval.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass

from tskd.core.checks import (
    boolean,
    integer,
    names_list,
    number,
    one_of,
    optional,
    text,
    workers,
)
from tskd.core.errors import DatasetError
from tskd.core.schema import MATCH_IF_SPLIT, MAY_DIFFER, MUST_MATCH, Schema, group, setting
from tskd.data import registry
from tskd.data.synthetic import LAYOUTS
from tskd.data.transforms import GRAY_DRAWS

MAX_AUTO_WORKERS = 8  # more loader workers than this per device only add memory
MIN_SIDE = 16  # the network downsamples by 16: a smaller side leaves no feature map


@dataclass(kw_only=True)
class SyntheticConfig(Schema):
    """``dataset.synthetic``: generate the dataset at ``dataset.root`` when it is not there."""

    layout: str = setting(one_of(LAYOUTS), resume=MUST_MATCH)
    seed: int = setting(integer(), resume=MUST_MATCH)


@dataclass(kw_only=True)
class DatasetConfig(Schema):
    """``dataset``: which data, where, at which image size, and the trial the test uses."""

    WHAT = "dataset"
    DEPENDS = ("name", "trial", "settings")

    name: str = setting(one_of(registry.names), resume=MUST_MATCH)
    root: str = setting(text, resume=MAY_DIFFER)  # data that was moved: its counts are checked
    img_h: int = setting(integer(MIN_SIDE), resume=MUST_MATCH)
    img_w: int = setting(integer(MIN_SIDE), resume=MUST_MATCH)
    # RegDB: the split (another one puts its test identities into training); SYSU, LLCM: the
    # gallery trial, a test-only choice
    trial: int | None = setting(
        optional(integer(0, 10)), resume=MATCH_IF_SPLIT,
        fix="RegDB: the split 1..10; SYSU-MM01, LLCM: the gallery trial 0..9, or null for all")
    shots: int = setting(integer(1), resume=MAY_DIFFER)
    cache_dir: str | None = setting(optional(text), resume=MAY_DIFFER)
    synthetic: SyntheticConfig | None = group(resume=MUST_MATCH)
    settings: list[str] | None = setting(optional(names_list), resume=MAY_DIFFER)

    def problems(self, key: str) -> list[str]:
        """The dataset's own trial range and settings (known once the name is)."""
        spec = registry.get(self.name)
        first, last = spec.trials.start, spec.trials.stop - 1
        out = []
        k = f"{key}.trial"
        if spec.trial_selects_training and self.trial not in spec.trials:
            out.append(f"{k}={self.trial!r} must be a {spec.title} split {first}..{last} "
                       f"(set {k}=<{first}..{last}>)")
        elif self.trial is not None and self.trial not in spec.trials:
            out.append(f"{k}={self.trial!r} must be a {spec.title} gallery trial "
                       f"{first}..{last} or null for all of them (set {k}=<{first}..{last}> or "
                       f"{k}=null)")
        if self.settings is not None:
            try:
                spec.resolve_settings(list(self.settings), "all")
            except DatasetError:
                out.append(f"{key}.settings={list(self.settings)!r} must list settings of "
                           f"{spec.title}: {list(spec.settings)} (or be null)")
        return out


@dataclass(kw_only=True)
class EvalDataConfig(Schema):
    """``data`` of evaluation: the loaders of the test pass."""

    num_workers: int | str = setting(
        workers, resume=MAY_DIFFER,
        fix=f"auto uses the CPUs of this process (at most {MAX_AUTO_WORKERS} per device)")
    test_batch_size: int = setting(integer(1), resume=MAY_DIFFER)


@dataclass(kw_only=True)
class DataConfig(EvalDataConfig):
    """``data`` of training: the batch (P identities x K images) and its augmentation."""

    num_ids: int = setting(integer(1), resume=MUST_MATCH)
    num_pos: int = setting(integer(1), resume=MUST_MATCH)
    pad: int = setting(integer(0), resume=MUST_MATCH)
    erasing_p: float = setting(number(0, high=1), resume=MUST_MATCH)
    gray_p: float = setting(number(0, high=1), resume=MUST_MATCH)
    gray_draw: str = setting(one_of(GRAY_DRAWS), resume=MUST_MATCH)
    channel_exchange: bool = setting(boolean, resume=MUST_MATCH)
