"""Writing result files so a reader never sees half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], *,
                 fsync: bool = False) -> None:
    """Write a file by rename: ``write`` fills a temporary file beside ``path``, which it replaces.

    Two DDP ranks may record into one run dir, and a reader (a sweep summary) may read while a
    run writes: a rename shows the old file or the new one, never a mix or a half. ``fsync``
    also forces the bytes to disk before the rename (large outputs a crash must not truncate).
    The file is made readable by everyone (mkstemp makes it owner-only; results are shared).
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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) to ``path`` by rename (see :func:`write_atomic`)."""
    write_atomic(path, lambda fh: fh.write(text.encode()))


def write_json_atomic(path: str | Path, doc: dict) -> None:
    """``doc`` as indented, newline-terminated JSON by rename (see :func:`write_atomic`)."""
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
