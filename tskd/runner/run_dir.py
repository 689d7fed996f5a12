"""One run per folder: a run or sweep dir that holds a run, or that a live run writes, is refused.

Hydra writes into ``hydra.run.dir`` / ``hydra.sweep.dir`` whatever is already there: two sweeps
given the same sweep dir both exit 0 and one's results are gone. :class:`ClaimRunDir`, a Hydra
callback (``configs/hydra/default.yaml``), runs before Hydra creates or writes anything there
(``on_run_start`` / ``on_multirun_start``) and calls :func:`claim`:

- a folder holding a run (Hydra's ``.hydra``, ``metrics.json``, ``status.json``,
  ``checkpoints``, a sweep's ``jobs.json`` ... itself or in a job folder below it) is refused;
- a folder whose lock file (:data:`LOCK_FILE`) names a live process is refused; the lock is
  created with ``O_EXCL``, so of two runs started together on one empty folder exactly one
  gets it. It holds the owner's pid and host, and is removed when the owner exits; one left by
  a killed process (its pid gone) does not block an otherwise empty folder.

The one folder that may hold a run is the one ``train.py`` resumes: ``ckpt=`` inside the folder
continues that run there (e.g. ``hydra.run.dir=<run> ckpt=<run>/checkpoints/last.ckpt``).
DDP processes that Lightning starts (``LOCAL_RANK`` > 0) write into their rank 0's folder and
claim nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tskd.core.errors import ConfigError

LOCK_FILE = ".tskd.lock"
# What a run (train.py, eval.py, tskd.apps.visualize) or a sweep leaves in its folder.
RUN_MARKERS = (".hydra", "metrics.json", "status.json", "run_info.json", "checkpoints",
               "multirun.yaml", "jobs.json", "summary.json")
_JOB_DEPTH = 2  # job folders of a sweep are looked for this many levels down (hydra.sweep.subdir)


def _host() -> str:
    return socket.gethostname()


def _read_lock(folder: Path) -> dict | None:
    try:
        lock = json.loads((folder / LOCK_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by an owner that is starting right now, or damaged
    return lock if isinstance(lock, dict) else {}


def _alive(lock: dict) -> bool:
    """Whether the lock's owner still runs (another host's owner cannot be checked: assume so)."""
    pid = lock.get("pid")
    if not isinstance(pid, int) or lock.get("host", _host()) != _host():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _run_inside(folder: Path) -> Path | None:
    """The first run marker in ``folder`` or in a job folder below it, if any."""
    levels = [folder]
    for depth in range(_JOB_DEPTH + 1):
        for here in levels:
            for name in RUN_MARKERS:
                if (here / name).exists():
                    return here / name
        if depth < _JOB_DEPTH:
            levels = [d for here in levels for d in sorted(here.iterdir())
                      if d.is_dir() and not d.name.startswith(".")]
    return None


def _refuse(key: str, folder: Path, what: str) -> ConfigError:
    return ConfigError(
        f"{key}={folder} {what}; a run never writes into another run's folder. Pass another "
        f"{key}=<new folder>, or leave {key} out for a new dated one (or move that "
        "folder away first). To continue a stopped training, resume it: python train.py "
        "<same settings> ckpt=<its run dir>/checkpoints/last.ckpt."
    )


def claim(folder: str | os.PathLike, key: str, resume: str | os.PathLike | None = None) -> None:
    """Make ``folder`` this process's run or sweep dir, or refuse (see module doc).

    Args:
        folder: The run or sweep dir (created if missing).
        key: The setting that named it, for the message (``hydra.run.dir``).
        resume: The checkpoint a training resumes; inside ``folder`` it may hold a run.

    Raises:
        ConfigError: ``folder`` holds a run or a live process writes it; names the way on.
    """
    folder = Path(folder).absolute()
    lock = _read_lock(folder)
    if lock is not None and _alive(lock):
        owner = f"pid {lock.get('pid', '?')} on {lock.get('host', '?')}"
        raise _refuse(key, folder, f"is being written by a live run ({owner}; its lock file "
                                   f"{folder / LOCK_FILE} goes when it ends: delete it only if "
                                   "that process is gone)")
    found = _run_inside(folder) if folder.is_dir() else None
    resuming = resume is not None and Path(resume).absolute().is_relative_to(folder)
    if found is not None and not resuming:
        raise _refuse(key, folder, f"already holds a run ({found.relative_to(folder)} is there)")
    if lock is not None:  # left by a process that is gone
        (folder / LOCK_FILE).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder / LOCK_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another run took it between our look and now
        raise _refuse(key, folder, "is being written by a live run (it started just now)") \
            from None
    with os.fdopen(fd, "w") as fh:
        json.dump({"pid": os.getpid(), "host": _host()}, fh)
    if not _held:
        atexit.register(_release_all)
    _held.add(folder)


_held: set[Path] = set()  # folders whose lock this process holds, released at exit


def release(folder: str | os.PathLike) -> None:
    """Remove ``folder``'s lock if this process holds it."""
    folder = Path(folder).absolute()
    _held.discard(folder)
    lock = _read_lock(folder)
    if lock and lock.get("pid") == os.getpid() and lock.get("host") == _host():
        with contextlib.suppress(FileNotFoundError):
            (folder / LOCK_FILE).unlink()


def _release_all() -> None:
    for folder in list(_held):
        release(folder)


def _spawned_rank() -> bool:
    return os.environ.get("LOCAL_RANK", "0") != "0"


class ClaimRunDir(Callback):
    """Hydra callback: :func:`claim` the run or sweep dir before Hydra writes into it.

    Hydra turns an exception raised by a callback into a warning and carries on, so a refusal
    leaves as ``SystemExit`` with the message (exit status 1), before Hydra made the folder.
    """

    def __init__(self, **_: Any) -> None:
        pass

    def _claim(self, config: DictConfig, key: str, resume: Any = None) -> None:
        if _spawned_rank():
            return
        try:
            claim(str(OmegaConf.select(config, key)), key, resume)
        except ConfigError as e:
            raise SystemExit(f"error: {e}") from None

    def on_run_start(self, config: DictConfig, config_name: str | None = None,
                     **kwargs: Any) -> None:
        # Only a training continues a run; eval.py into a training's folder would replace it.
        ckpt = OmegaConf.select(config, "ckpt") if config_name == "train" else None
        self._claim(config, "hydra.run.dir", ckpt or None)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.sweep.dir")
