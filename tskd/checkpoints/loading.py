"""Reading checkpoints written by train.py safely, and rebuilding the model they hold.

Checkpoints are loaded with ``torch.load(weights_only=True)``: they hold only tensors,
primitives and plain containers, so a file can never run code. Every problem (missing file, a
file that is not a tskd checkpoint, a model that does not fit) raises
:class:`tskd.core.errors.CheckpointError` naming the file and what to do. When the file is
missing or unreadable and the copy it replaced (``last.prev.ckpt``, kept by
:mod:`tskd.checkpoints.saving`) is there, the error names that copy.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path

import torch

from tskd.core.errors import CheckpointError
from tskd.core.files import previous_path
from tskd.core.schema import nested


def _previous_copy_hint(p: Path) -> str:
    prev = previous_path(p)
    if p.name.endswith(".prev.ckpt") or not prev.is_file():
        return ""
    return (f" The copy it replaced, one save earlier, is {prev}: pass ckpt={prev} to resume or "
            "evaluate from it.")


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at ``path`` (on CPU), checked to be a tskd checkpoint."""
    p = Path(path)
    if not p.is_file():
        hint = _previous_copy_hint(p)
        if not hint and p.parent.is_dir():
            found = sorted(x.name for x in p.parent.glob("*.ckpt"))[:5]
            hint = f" Checkpoints in {p.parent}: {found}." if found else ""
        raise CheckpointError(
            f"checkpoint {p} does not exist.{hint} Pass ckpt=<run dir>/checkpoints/last.ckpt."
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or a damaged file
        raise CheckpointError(
            f"cannot read checkpoint {p} with weights_only=True ({type(e).__name__}: {e}). "
            "Only checkpoints written by tskd's train.py are accepted."
            + _previous_copy_hint(p)
        ) from e
    if not isinstance(ckpt, dict) or "tskd" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{p} is not a tskd checkpoint (no 'tskd' metadata); pass a checkpoint written by "
            "train.py (<run dir>/checkpoints/last.ckpt)."
        )
    check_format(ckpt, p)
    return ckpt


def check_format(ckpt: dict, path: str | Path = "<checkpoint>") -> None:
    """Refuse a checkpoint whose layout (``ckpt["tskd"]["format"]``) this version cannot read.

    The format number changes when what a checkpoint holds changes meaning (format 2: one
    confidence per visible view, prototype bank sums as extra state); reading another one would
    resume or test a model with wrongly placed state, so it stops here instead.

    Raises:
        CheckpointError: Naming the checkpoint's format, the one expected and the fix.
    """
    from tskd.models.tskd_module import CHECKPOINT_FORMAT  # heavy import only when needed

    found = ckpt["tskd"].get("format") if isinstance(ckpt["tskd"], dict) else None
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {found!r} but this tskd version reads format "
            f"{CHECKPOINT_FORMAT}; evaluate or resume it with the tskd version that wrote it "
            "(its run_info.json names the git revision), or retrain with this one."
        )


def recorded_dataset(ckpt: dict) -> dict:
    """The dataset node a checkpoint was trained with (name, root, size, split, cache...).

    Checkpoints record their whole run config (older ones: the module's ``dataset`` argument
    only); the dataset's YAML (configs/dataset/<name>.yaml) fills in the keys a record lacks.
    """
    from tskd.config import CONFIGS, yaml_values

    hp = ckpt.get("hyper_parameters", {})
    node = (hp.get("config") or {}).get("dataset") or hp.get("dataset") or {}
    name = node.get("name", ckpt["tskd"]["dataset"])
    known = (CONFIGS / "dataset" / f"{name}.yaml").is_file()
    return {**(yaml_values(f"dataset/{name}.yaml") if known else {}), **node}


def _from_record(schema: type, record: Mapping, base: Mapping, key: str):
    """The typed object of a node a checkpoint recorded.

    Keys an older checkpoint lacks come from the YAML values ``base`` (where the default
    lives), keys the schema no longer has are dropped.

    Raises:
        ConfigError: A recorded value no longer passes its check.
    """
    def merge(schema_: type, rec: Mapping, b: Mapping) -> dict:
        hints, out = typing.get_type_hints(schema_), {}
        for f in dataclasses.fields(schema_):
            sub, _ = nested(hints[f.name])
            if f.name in rec and sub and isinstance(rec[f.name], Mapping):
                out[f.name] = merge(sub, rec[f.name], b.get(f.name) or {})
            elif f.name in rec:
                out[f.name] = rec[f.name]
            elif f.name in b:
                out[f.name] = b[f.name]
        return out

    return schema.of(merge(schema, record, base), key)


def module_arguments(ckpt: dict) -> dict:
    """``TSKDModule``'s typed arguments from a checkpoint's plain hyper-parameters.

    Keys a checkpoint of an older tskd lacks take the YAML's value (where the default lives);
    the counts, ``channels_last`` and the recorded run config are passed through.

    Raises:
        ConfigError: A recorded value does not pass the schema (an edited checkpoint).
    """
    from tskd.config import (
        DatasetConfig,
        EvalPassOptions,
        LossConfig,
        ModelConfig,
        OptimConfig,
        SupervisionConfig,
        yaml_values,
    )

    hp = dict(ckpt.get("hyper_parameters", {}))
    train = {k: yaml_values("train.yaml", k) for k in ("optim", "eval")}
    return {
        **{k: hp[k] for k in ("num_classes", "num_visible", "num_infrared")},
        "dataset": _from_record(DatasetConfig, recorded_dataset(ckpt), {}, "dataset"),
        "model": _from_record(ModelConfig, hp.get("model", {}),
                              yaml_values("model/tskd.yaml"), "model"),
        "loss": _from_record(LossConfig, hp.get("loss", {}), yaml_values("loss/tskd.yaml"),
                             "loss"),
        "optim": _from_record(OptimConfig, hp.get("optim", {}), train["optim"], "optim"),
        "eval": _from_record(EvalPassOptions, hp.get("eval") or {}, train["eval"], "eval"),
        "channels_last": bool(hp.get("channels_last", False)),
        "config": hp.get("config"),
        # checkpoints from before the supervision group: full labels
        "supervision": (_from_record(SupervisionConfig, hp["supervision"],
                                     yaml_values("supervision/full.yaml"), "supervision")
                        if hp.get("supervision") else None),
    }
# What evaluation, export, embedding and the visualiser read from a checkpoint's "tskd" block.
REQUIRED_METADATA = ("dataset", "trial", "num_classes", "img_size", "backbone")


def require_contents(ckpt: dict, path: str | Path = "<checkpoint>") -> dict:
    """The checkpoint's ``tskd`` metadata, once it holds everything the tools read.

    :func:`load_checkpoint` accepts any dict with ``tskd`` and ``state_dict`` (resuming reads no
    more); using a model also needs the metadata keys of :data:`REQUIRED_METADATA` and the
    module's ``hyper_parameters``, which train.py always saves. A file cut down by a script
    would otherwise fail later with a bare ``KeyError``.

    Raises:
        CheckpointError: Naming every missing key and the file to use instead.
    """
    meta = ckpt["tskd"] if isinstance(ckpt.get("tskd"), dict) else {}
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    size = meta.get("img_size")
    if "img_size" not in missing and not (
            isinstance(size, list | tuple) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        missing.append("img_size (as [height, width])")
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict) or not hp:
        missing.append("hyper_parameters")
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(map(repr, missing))}: it is not a whole "
            "checkpoint as train.py saves it (edited, or cut down by a script). Use the file "
            "train.py wrote, <run dir>/checkpoints/last.ckpt." + _previous_copy_hint(Path(path))
        )
    return meta


def build_module(ckpt: dict, path: str | Path = "<checkpoint>", **overrides):
    """A ``TSKDModule`` with the checkpoint's weights, in eval mode.

    Args:
        ckpt: A dict from :func:`load_checkpoint`.
        path: Its file, for messages.
        **overrides: Constructor arguments to replace (e.g. ``eval=cfg.eval``).
    """
    from tskd.core.errors import ConfigError
    from tskd.models.tskd_module import TSKDModule  # heavy import only when needed

    require_contents(ckpt, path)
    try:
        args = module_arguments(ckpt)
        # the weights come from the checkpoint: never download or read ImageNet weights again
        args["model"] = dataclasses.replace(args["model"], pretrained=False)
        args.update(overrides)
        module = TSKDModule(**args)
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, TypeError, KeyError, ConfigError) as e:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model it describes ({e}). It was written by an "
            "incompatible tskd version or edited; retrain or use the matching tskd version."
        ) from e
    return module.eval()
