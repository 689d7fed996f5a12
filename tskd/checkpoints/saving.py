"""Checkpoint writes that a kill at any moment cannot turn into the loss of the only checkpoint.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction: the bytes go to a temp
file made by ``tempfile.mkstemp()`` (the system temp dir), and the commit is ``shutil.move``
onto the checkpoint. When the temp dir is on another filesystem (a tmpfs ``/tmp``, a cluster's
local scratch) that move is a copy that opens ``last.ckpt`` for writing, truncating it, so a
run killed during the epoch-end save is left with a truncated ``last.ckpt`` and nothing else.
Nothing is fsync'ed either.

:func:`write_checkpoint` writes beside the checkpoint instead (``last.ckpt.partial``), fsyncs
it, keeps the file it replaces as ``last.prev.ckpt`` (a hard link: no copy, and at every
instant both names hold complete files) and renames the new file into place. A kill leaves
either the old ``last.ckpt`` or the new one, plus the previous epoch's copy. A save that fails
for want of space (ENOSPC, a quota) is a :class:`~tskd.core.errors.CheckpointSaveError` naming the
file, the checkpoint that is still intact and the fix, not torch's "unexpected pos".

Before anything is written, :func:`check_finite_state` looks at every floating tensor of the
model state: a step that made the weights NaN or Inf (with a finite loss, so the loss check
did not stop it) must not replace the last good checkpoint. The save is refused instead, with
an error naming the files that still hold the last finite state.

:class:`SafeModelCheckpoint` (``configs/callbacks/default.yaml``) is Lightning's
``ModelCheckpoint`` that installs :class:`AtomicCheckpointIO` on the trainer's strategy, so
every ``trainer.save_checkpoint`` of the run goes through :func:`write_checkpoint`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from tskd.core.errors import CheckpointError, CheckpointSaveError
from tskd.core.files import previous_path

PARTIAL_SUFFIX = ".partial"


def _fsync_dir(folder: Path) -> None:
    # The renames are durable only once the directory entry is on disk (POSIX; not on Windows).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _keep_previous(path: Path) -> None:
    prev = previous_path(path)
    staged = prev.with_name(prev.name + PARTIAL_SUFFIX)
    staged.unlink(missing_ok=True)
    try:
        os.link(path, staged)
    except OSError:  # no hard links here (some network filesystems): copy, then sync
        shutil.copyfile(path, staged)
        with open(staged, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(staged, prev)


def _non_finite(state: dict, prefix: str = "") -> list[str]:
    """``"name (k of n values NaN or Inf)"`` for each floating tensor of ``state`` with any."""
    found = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):  # extra state (the prototype bank's sums) is a dict
            found += _non_finite(value, f"{name}.")
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = int(value.numel() - torch.isfinite(value).sum())
            if bad:
                found.append(f"{name} ({bad} of {value.numel()} values NaN or Inf)")
    return found


def check_finite_state(checkpoint: Any, path: str | Path) -> None:
    """Refuse to save a checkpoint whose ``state_dict`` holds NaN or Inf (module doc).

    Raises:
        CheckpointError: Naming the tensors, and the files at ``path`` that are kept.
    """
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    bad = _non_finite(state) if isinstance(state, dict) else []
    if not bad:
        return
    path = Path(str(path))
    prev = previous_path(path)
    retrain = ("start a new run with a lower learning rate (optim.lr_*) or another seed (a "
               "resume would repeat the same steps)")
    if path.is_file():
        also = f" and {prev} are" if prev.is_file() else " is"
        kept = (f"{path} (the previous save){also} kept and hold the last finite state: "
                f"evaluate it with eval.py ckpt={path}; to train on, {retrain}")
    else:
        kept = f"No earlier checkpoint of this run exists; {retrain}"
    more = f", and {len(bad) - 3} more tensor(s)" if len(bad) > 3 else ""
    raise CheckpointError(
        f"the model state was not saved to {path}: a training step made the weights "
        f"non-finite, though its loss was finite ({', '.join(bad[:3])}{more}). {kept}."
    )


def write_checkpoint(checkpoint: Any, path: str | Path, keep_previous: bool = True) -> None:
    """``torch.save(checkpoint, path)``, atomically, keeping the replaced file (see module doc).

    Args:
        checkpoint: Anything ``torch.save`` accepts.
        path: The checkpoint file; its folder is created if needed.
        keep_previous: Keep the file being replaced as :func:`previous_path`.

    Raises:
        CheckpointError: ``checkpoint["state_dict"]`` holds NaN or Inf; nothing was written.
        CheckpointSaveError: The write failed (a full disk); the old files are intact.
    """
    path = Path(path)
    check_finite_state(checkpoint, path)  # before a byte is written: the old files stay
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    sink = None
    try:
        with open(partial, "wb") as fh:
            sink = _RecordingFile(fh)
            torch.save(checkpoint, sink)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.is_file():
            _keep_previous(path)
    except BaseException as err:  # an error or a signal (tskd.core.entry.Interrupted): no debris
        partial.unlink(missing_ok=True)
        cause = sink.error if sink is not None and sink.error is not None else err
        if isinstance(cause, OSError):
            failure = CheckpointSaveError(_save_failed(path, cause))
            failure.errno = cause.errno
            raise failure from err
        raise
    os.replace(partial, path)
    _fsync_dir(path.parent)


class _RecordingFile:
    """A file for ``torch.save`` that remembers why a write failed.

    torch reports a failed write to a file object as "unexpected pos 704 vs 598", losing the
    OSError (ENOSPC, EDQUOT, EIO) that says what happened; this keeps it.
    """

    def __init__(self, fh) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


def _save_failed(path: Path, err: OSError) -> str:
    """The message for a save of ``path`` that failed with ``err``: what is intact, what to do."""
    if path.is_file():
        kept = (f"{path} is unchanged (the previous save): resume from it with ckpt={path} once "
                "there is room")
    else:
        kept = "no checkpoint of this run was written yet"
    return (f"cannot save checkpoint {path}: {err.strerror or err}; {kept}. Free space on the "
            f"disk holding {path.parent}, or point callbacks.model_checkpoint.dirpath (or "
            "hydra.run.dir) at a disk with room.")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through :func:`write_checkpoint`.

    Remote paths (``s3://`` and the like) keep Lightning's fsspec transaction, which uploads
    the object in one piece.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        """Writes ``checkpoint`` to ``path`` atomically, keeping the previous copy."""
        if storage_options is not None or not _is_local_file_protocol(path):
            check_finite_state(checkpoint, path)
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_checkpoint(checkpoint, path)


class SafeModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose files are written by :class:`AtomicCheckpointIO`.

    The trainer is built in ``tskd.runner.run`` from the configs; this callback is where the configs
    can reach the strategy, and ``setup`` runs before the first save on every rank.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        strategy = trainer.strategy
        current = strategy.checkpoint_io
        if type(current) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()
        elif not isinstance(current, AtomicCheckpointIO):
            rank_zero_warn(f"the trainer uses {type(current).__name__} to write checkpoints; "
                           "SafeModelCheckpoint leaves it in place, so its saves are not made "
                           "atomic and no previous copy is kept")
