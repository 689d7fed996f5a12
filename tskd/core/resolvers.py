"""OmegaConf resolvers the configs use to name run dirs and default paths.

``${tskd.cwd:}``
    The directory the command was started from: Hydra's ``runtime.cwd`` once Hydra has set up
    the job, the process's working directory before that. Hydra resolves ``hydra.sweep.dir``
    before its own ``${hydra:runtime.cwd}`` works, so a default path the sweep dir uses cannot
    rely on ``${hydra:...}``.
``${tskd.run_id:}``
    ``<pid>-<4 hex digits>``, fixed for the life of the process. Two runs started in the same
    second get distinct run dirs (``<time>_<run_id>``), which still sort by time.

:func:`literal_config` is the other side: values that are data, not config (what a checkpoint
recorded, a config already resolved), made into a ``DictConfig`` without being read as
interpolations.

The resolvers must exist before Hydra resolves a run or sweep dir. :func:`register` runs when
this module is imported; the entry points import it, and ``configs/hydra/default.yaml`` names
:class:`RegisterResolvers` as a Hydra callback, which Hydra instantiates (importing this module)
right after composing the config and before it resolves any dir, for every app that uses those
configs (``train.py``, ``eval.py``, ``python -m tskd.apps.visualize``).
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# Drawn once per process: every dir a process names shares it, and no two live processes on one
# machine share a pid; the random part separates processes on machines sharing a log folder.
RUN_ID = f"{os.getpid()}-{secrets.token_hex(2)}"


def _launch_cwd() -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():  # inside a job: identical to ${hydra:runtime.cwd}
        return str(HydraConfig.get().runtime.cwd)
    return os.getcwd()  # composing or resolving the sweep dir: Hydra has not changed dir yet


def register() -> None:
    """Registers ``tskd.cwd`` and ``tskd.run_id``; safe to call any number of times."""
    if not OmegaConf.has_resolver("tskd.cwd"):
        OmegaConf.register_new_resolver("tskd.cwd", _launch_cwd)
    if not OmegaConf.has_resolver("tskd.run_id"):
        OmegaConf.register_new_resolver("tskd.run_id", lambda: RUN_ID)


_INTERPOLATION = re.compile(r"(\\*)\$\{")  # "${", with the backslashes before it


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        # OmegaConf reads "\${" as a literal "${", and "\\" before "${" as one backslash
        return _INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value


def literal_config(tree: dict) -> DictConfig:
    """``OmegaConf.create(tree)`` whose strings stay exactly as given.

    ``OmegaConf.create`` reads ``"${oc.env:HOME}"`` in a value as an interpolation, resolved on
    access. For data (a checkpoint's recorded ``dataset.root``, a config already resolved once)
    that would read environment variables or other keys into paths; here every string is
    escaped first, so reading the node gives back the very string that was stored.
    """
    return OmegaConf.create(_escaped(tree))


class RegisterResolvers(Callback):
    """Hydra callback whose only job is to have the resolvers registered before dirs resolve."""

    def __init__(self, **_: Any) -> None:
        register()


register()
