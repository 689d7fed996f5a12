"""Writing result files so a reader never sees half of one, and never an unwritable folder late.

:func:`write_atomic` writes one file by rename. :func:`replace_together` puts several finished
temporaries in place as one change (an error between two renames puts the earlier files back),
for outputs that only make sense as a set (features and their index, the two ONNX graphs).
:func:`folder_problem` and :func:`check_output_folders` find a folder that cannot be written
before the work whose results it is meant to hold.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from tskd.core.errors import ConfigError, OutputExistsError


def write_temporary(path: str | Path, write: Callable[[BinaryIO], object], *,
                    fsync: bool = False) -> Path:
    """A new temporary file beside ``path``, filled by ``write``; removed if that fails.

    The file is made readable by everyone (mkstemp makes it owner-only; results are shared).
    ``fsync`` forces the bytes to disk before returning (large outputs a crash must not
    truncate once they are renamed into place).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], *,
                 fsync: bool = False) -> None:
    """Write a file by rename: ``write`` fills a temporary file beside ``path``, which it replaces.

    Two DDP ranks may record into one run dir, and a reader (a sweep summary) may read while a
    run writes: a rename shows the old file or the new one, never a mix or a half.
    """
    tmp = write_temporary(path, write, fsync=fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) to ``path`` by rename (see :func:`write_atomic`)."""
    write_atomic(path, lambda fh: fh.write(text.encode()))


def write_json_atomic(path: str | Path, doc: dict) -> None:
    """``doc`` as indented, newline-terminated JSON by rename (see :func:`write_atomic`)."""
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")


def replace_together(moves: Sequence[tuple[Path, Path]]) -> None:
    """Rename each finished temporary onto its destination: all of them, or none.

    Every destination that exists is first kept under a hidden name (a hard link, so both names
    hold the complete old file). When a rename fails (an error, Ctrl-C), the destinations
    already replaced get their old files back, and new ones are removed, so a failure never
    leaves a set that mixes old and new files. The kept copies go once all are in place. The
    temporaries are removed either way. (A kill -9 between two renames cannot be undone here.)

    Args:
        moves: ``(temporary, destination)`` pairs, each on the destination's filesystem.
    """
    token = secrets.token_hex(4)
    kept: list[Path] = []
    done: list[tuple[Path, Path | None]] = []  # (destination, its kept old file or None)
    try:
        for tmp, dest in moves:
            old = None
            if os.path.lexists(dest):
                old = dest.with_name(f".{dest.name}.{token}.old")
                try:
                    os.link(dest, old)
                except OSError:  # no hard links on this filesystem: a copy keeps it as well
                    shutil.copy2(dest, old)
                kept.append(old)
            os.replace(tmp, dest)
            done.append((dest, old))
    except BaseException:
        for dest, old in reversed(done):
            try:
                if old is None:
                    dest.unlink(missing_ok=True)
                else:
                    os.replace(old, dest)
            except OSError:  # the old file is still there under its kept name
                continue
        raise
    finally:
        for path in [*kept, *(tmp for tmp, _ in moves)]:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass


def refuse_existing(paths: Sequence[Path], how: str) -> None:
    """Stop, writing nothing, when any of ``paths`` exists (``how``: the ways on).

    Raises:
        OutputExistsError: Naming the existing files.
    """
    existing = [p for p in paths if os.path.lexists(p)]
    if existing:
        one = len(existing) == 1
        raise OutputExistsError(
            f"{' and '.join(map(str, existing))} already exist{'s' if one else ''}; nothing was "
            f"written. {how.format(it='it' if one else 'them')}")


def folder_problem(folder: str | Path) -> str | None:
    """Why no file can be written in ``folder``, or None when one can; nothing is left behind.

    A file (or, for a folder still to be made, a folder in its nearest existing parent) is
    created and removed to find out: permissions alone do not tell (root, ACLs, read-only
    mounts).
    """
    folder = Path(folder)
    base = folder
    while not base.exists() and base.parent != base:  # the nearest part that exists
        base = base.parent
    if not base.is_dir():
        return "it is a file, not a folder" if base == folder else f"{base} is a file"
    try:
        if base == folder:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".tskd-write-test-")
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(dir=base, prefix=".tskd-write-test-"))
    except OSError as err:
        return f"{base}: {err.strerror or err}"
    return None


def check_output_folders(cfg) -> None:
    """The run dir and every callback's ``dirpath`` (the checkpoints) can be written.

    Called before training starts, so a run never trains for an epoch and then fails to save.

    Raises:
        ConfigError: Naming the key, the folder, why, and the fix.
    """
    from omegaconf import OmegaConf

    folders = [("paths.output_dir (the run dir, hydra.run.dir)", cfg.paths.output_dir)]
    for name, node in (OmegaConf.select(cfg, "callbacks") or {}).items():
        dirpath = OmegaConf.select(node, "dirpath") if OmegaConf.is_config(node) else None
        if dirpath:
            folders.append((f"callbacks.{name}.dirpath", dirpath))
    for key, folder in folders:
        why = folder_problem(folder)
        if why is not None:
            raise ConfigError(
                f"{key}={folder} cannot be written ({why}); nothing was started. Point it at a "
                "folder you can write, on a disk with room for the checkpoints and logs.")


def previous_path(path: str | Path) -> Path:
    """Where a save keeps the copy it replaced (checkpoints, :mod:`tskd.checkpoints.saving`), so
    tools can name it: ``last.ckpt`` -> ``last.prev.ckpt``.

    Here, on the ground floor, because :mod:`tskd.core.finite` names it in its messages too.
    """
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")
