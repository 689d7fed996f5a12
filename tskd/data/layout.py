"""What every dataset reader shares: the root's folders, image listings and list files.

A listing or a list file that cannot be read as it should (a symbolic link loop, a link to
nothing, a file name that is not UTF-8, a list saved as UTF-16) stops with the file and the fix
instead of a raw traceback or an image silently left out.
"""

from __future__ import annotations

import codecs
import errno
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

from tskd.core.errors import DatasetError

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
        if os.path.islink(folder):  # a link to nothing, or a loop: not "no images here"
            raise DatasetError(broken_link(folder, f"{dataset} folder"))
        return []
    names = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):  # the first problem, always
        if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
            continue
        try:
            is_file = entry.is_file()
        except OSError:  # ELOOP: a link that leads back to itself
            is_file = False
        if not is_file:
            if entry.is_symlink():
                raise DatasetError(broken_link(entry.path, f"{dataset} image"))
            continue
        require_utf8_name(entry.path)
        names.append(entry.name)
    if not names:
        raise DatasetError(
            f"{dataset} folder {folder} exists but holds no image ({', '.join(IMAGE_EXTENSIONS)})."
            " Remove the empty folder or restore its images."
        )
    # Joining onto the sorted names equals sorting the joined paths (shared prefix).
    return [os.path.join(folder, name) for name in names]


def broken_link(path: str, what: str) -> str:
    """The message for a symbolic link at ``path`` that leads nowhere (``what``: e.g. an image)."""
    target = os.readlink(path)
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return (f"{what} {path} is a symbolic link loop (it leads back to itself through "
                    f"{target}); remove the link or point it at the real file.")
    return (f"{what} {path} is a symbolic link that points to {target}, which does not exist; "
            "restore the target (e.g. the copy the links point into) or remove the link.")


_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
              (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def read_list(file: str, what: str) -> str:
    """The text of a list file (split ids, an image index), read as UTF-8.

    A UTF-8 byte-order mark is dropped (Windows editors add one) and line ends are made
    ``\\n`` as text mode would.

    Args:
        file: The list file.
        what: What it is, for messages (e.g. ``"SYSU-MM01 split file"``).

    Raises:
        DatasetError: The file is UTF-16/32 (a byte-order mark, or NUL bytes) or holds bytes
            that are not UTF-8: naming the file (and line) and the fix.
    """
    with open(file, "rb") as fh:
        raw = fh.read()
    wide = next((name for bom, name in _WIDE_BOMS if raw.startswith(bom)), None)
    if wide is None and b"\0" in raw:
        wide = "UTF-16"  # without a byte-order mark: every ASCII character has a NUL beside it
    if wide:
        raise DatasetError(
            f"{what} {file} is {wide}-encoded (as Windows Notepad's \"Unicode\" saves it); lists "
            f"are read as UTF-8: open it and save it as UTF-8 (or `iconv -f {wide} -t UTF-8 "
            f"{file} > fixed.txt`, then move fixed.txt over it)."
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DatasetError(
            f"{what} {file}, line {line} is not UTF-8 (byte {raw[err.start]:#04x}); save it as "
            "UTF-8 or restore it from the dataset archive."
        ) from None
    return io.StringIO(text, newline=None).read()


def list_lines(file: str, what: str) -> list[str]:
    """The lines of a list file as iterating it in text mode gives them (see :func:`read_list`)."""
    return io.StringIO(read_list(file, what)).readlines()


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
