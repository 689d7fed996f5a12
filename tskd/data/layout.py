"""The one check every dataset reader starts with: its root holds the folders of its layout."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from tskd.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")  # what a listing counts as an image
CAM_DIR = re.compile(r"cam(\d+)")  # a camera folder, matched against one path part only


def require_folders(root: str | os.PathLike, dataset: str, folders: Sequence[str],
                    holding: str, layout: str) -> Path:
    """``root`` as a Path, once it is a folder containing every name in ``folders``.

    Args:
        root: The dataset root (``dataset.root``).
        dataset: The dataset's name for messages, e.g. ``"SYSU-MM01"``.
        folders: Sub-folders the layout needs.
        holding: How to describe them to a user, e.g. ``"cam1..cam6 and exp/"``.
        layout: The expected layout, appended to every message.

    Raises:
        DatasetError: The root is not a folder, or some folders are missing (all listed).
    """
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(
            f"{dataset} root {str(root)!r} does not exist or is not a folder. Set dataset.root "
            f"to the folder holding {holding}.\n{layout}"
        )
    missing = [name for name in folders if not (path / name).is_dir()]
    if missing:
        raise DatasetError(
            f"{dataset} root {str(root)!r} lacks the folder(s) {', '.join(missing)}. Set "
            f"dataset.root to the unpacked {dataset} folder.\n{layout}"
        )
    return path


def sorted_images(folder: str, dataset: str) -> list[str]:
    """Sorted image paths in ``folder`` (``[]`` when the folder does not exist).

    Raises:
        DatasetError: The folder exists but holds no image (an empty identity folder would
            otherwise silently drop a gallery draw).
    """
    if not os.path.isdir(folder):
        return []
    names = sorted(
        e.name for e in os.scandir(folder)
        if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
    )
    if not names:
        raise DatasetError(
            f"{dataset} folder {folder} exists but holds no image ({', '.join(IMAGE_EXTENSIONS)})."
            " Remove the empty folder or restore its images."
        )
    # Joining onto the sorted names equals sorting the joined paths (shared prefix).
    return [os.path.join(folder, name) for name in names]


def require_utf8_name(path: str) -> None:
    """Refuse a file name that is not UTF-8 (Python holds its bytes as lone surrogates).

    Such a name cannot be written to a manifest, a JSON index or a log line, and every later
    step would fail on it; one message up front names it instead.

    Raises:
        DatasetError: Naming the file's raw bytes and the fix.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(
            f"image file name {os.fsencode(path)!r} is not valid UTF-8 (it was written by a "
            "system using another encoding, e.g. Latin-1); rename it to a UTF-8 name (e.g. "
            "`convmv -f latin1 -t utf8 --notest -r <folder>`), then run again."
        ) from None
