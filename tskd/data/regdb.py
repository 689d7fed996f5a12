"""RegDB: raw folder layout, the ten train/test splits and the two search directions.

Dataset (Nguyen et al., "Person Recognition System Based on a Combination of Body Images from
Visible Light and Thermal Cameras", Sensors 2017): 412 identities, each with 10 visible and 10
thermal images taken at the same time by a dual-camera system. The standard protocol defines
10 random splits ("trials" 1..10), each with 206 training identities (labels 0..205) and the
206 other identities for testing (2,060 visible + 2,060 thermal test images). One model is
trained per trial and tested on that trial only (another trial's test ids were seen in training).

Layout::

    ROOT/Visible/<id>/*.bmp   ROOT/Thermal/<id>/*.bmp
    ROOT/idx/{train,test}_{visible,thermal}_{t}.txt     t = 1..10, lines "relative/path label"

Each idx path must be relative, free of ``..``, under its modality's folder (``Visible/`` for the
visible lists, ``Thermal/`` for the thermal ones) and listed once per file; a UTF-8 byte-order
mark at the start of a file is ignored.

Directions: visible2thermal = visible query, thermal gallery; thermal2visible = the reverse.
The metric removes nothing and uses image-level CMC (see ``tskd.metrics``). Every list is taken
from the idx files as they are; test identities are the files' labels.
"""

from __future__ import annotations

import operator
import os
import re
from pathlib import Path, PureWindowsPath

import numpy as np

from tskd.core.errors import DatasetError
from tskd.data.layout import list_lines, require_folders
from tskd.data.protocol import INFRARED, VISIBLE, DatasetProtocol, Record, Search

DIRECTIONS = ("visible2thermal", "thermal2visible")
TRIALS = range(1, 11)
VISIBLE_CAM = 1
THERMAL_CAM = 2
SPLITS = ("train", "test")
MODALITIES = ("visible", "thermal")
MODALITY_FOLDERS = {"visible": "Visible", "thermal": "Thermal"}

_LAYOUT = (
    "Expected layout:\n"
    "  ROOT/Visible/<id>/*.bmp, ROOT/Thermal/<id>/*.bmp\n"
    "  ROOT/idx/{train,test}_{visible,thermal}_{1..10}.txt with lines 'relative/path label'"
)


def check_root(root: str | os.PathLike) -> Path:
    """Check that ``root`` holds ``Visible/``, ``Thermal/`` and ``idx/``.

    Raises:
        DatasetError: The root or any of those folders is missing (all are listed).
    """
    return require_folders(root, "RegDB", ("Visible", "Thermal", "idx"),
                           "Visible/, Thermal/ and idx/", _LAYOUT)


def _check_trial(trial: int) -> int:
    """The trial as an int (numpy ints accepted), or DatasetError naming the valid range."""
    try:
        value = None if isinstance(trial, bool) else operator.index(trial)
    except TypeError:
        value = None
    if value not in TRIALS:
        raise DatasetError(
            f"RegDB trial {trial!r} is out of range; valid trials are "
            f"{TRIALS.start}..{TRIALS.stop - 1} (set dataset.trial)."
        )
    return value


def _relative_key(file: str, number: int, rel: str, modality: str, folder: str) -> str:
    """The path of one idx line normalised to ``Folder/.../name``, after checking it.

    The path must be relative, stay inside the root and lie under the folder of the file's
    modality: a thermal image in a visible list would silently train the visible branch on
    thermal data, and an absolute path would make the list depend on one machine.

    Raises:
        DatasetError: The path breaks one of these rules (naming the file, line and fix).
    """
    where = f"RegDB split file {file}, line {number}: path {rel!r}"
    if os.path.isabs(rel) or PureWindowsPath(rel).drive:
        raise DatasetError(
            f"{where} is absolute; idx paths are relative to the dataset root (e.g. "
            f"'{folder}/12/img.bmp'). Make it relative to dataset.root or restore the file."
        )
    # Split on both separators so '..' or a wrong folder is caught however the path is spelled.
    parts = [p for p in re.split(r"[\\/]", rel) if p not in ("", ".")]
    if ".." in parts:
        raise DatasetError(
            f"{where} contains '..' and may point outside the dataset root; list the image as "
            f"'{folder}/<id>/<file>' relative to dataset.root, or restore the file."
        )
    if not parts or parts[0].casefold() != folder.casefold():
        other = [f for f in MODALITY_FOLDERS.values() if f != folder][0]
        if parts and parts[0] == other:
            what = f"names a {other}/ image"
        else:
            what = f"is not under {folder}/"
        raise DatasetError(
            f"{where} {what}, but this is the {modality} list (its images go through the "
            f"{modality} branch). Point it at the {folder}/ image or restore the idx file."
        )
    return "/".join(parts)


def read_idx(
    root: str | os.PathLike, split: str, modality: str, trial: int
) -> list[tuple[str, int]]:
    """Read ``ROOT/idx/{split}_{modality}_{trial}.txt``.

    Args:
        root: Dataset root.
        split: ``"train"`` or ``"test"``.
        modality: ``"visible"`` or ``"thermal"``.
        trial: 1..10.

    Returns:
        ``(path, label)`` per non-blank line, in file order; ``path`` joined onto ``root``.

    Raises:
        DatasetError: Bad split/modality/trial, missing file, malformed line, a path that is
            absolute, contains ``..``, lies outside the modality's folder or is listed twice,
            or a listed image that does not exist.
    """
    trial = _check_trial(trial)
    if split not in SPLITS or modality not in MODALITIES:
        raise DatasetError(
            f"RegDB idx file wanted for split {split!r} / modality {modality!r}; valid: "
            f"split in {SPLITS}, modality in {MODALITIES}."
        )
    file = os.path.join(root, "idx", f"{split}_{modality}_{trial}.txt")
    if not os.path.isfile(file):
        raise DatasetError(
            f"RegDB split file {file} is missing. Restore the idx/ folder of the dataset.\n"
            f"{_LAYOUT}"
        )
    folder = MODALITY_FOLDERS[modality]
    records: list[tuple[str, int]] = []
    first_line: dict[str, int] = {}  # normalised relative path -> line that listed it
    # read_list drops a byte-order mark (Windows editors add one), which would otherwise be glued
    # to the first path and make it "not exist" with an invisible character.
    for number, raw in enumerate(list_lines(file, "RegDB split file"), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.rsplit(maxsplit=1)  # the path is everything before the last field
        label = fields[-1]
        if len(fields) != 2 or not (label.isascii() and label.lstrip("-").isdigit()):
            raise DatasetError(
                f"RegDB split file {file}, line {number}: {line[:120]!r} is malformed; "
                "expected 'relative/path label' (e.g. 'Visible/12/img.bmp 3'). Fix or "
                "restore the file."
            )
        key = _relative_key(file, number, fields[0], modality, folder)
        if key in first_line:
            raise DatasetError(
                f"RegDB split file {file}, line {number}: {fields[0]!r} repeats line "
                f"{first_line[key]}; every image is listed once (a repeat counts it twice in "
                "training or in the gallery). Delete the repeated line or restore the file."
            )
        first_line[key] = number
        path = os.path.join(root, fields[0])
        if not os.path.isfile(path):
            raise DatasetError(
                f"RegDB split file {file}, line {number} lists {path}, which does not exist. "
                "Restore the image or check dataset.root."
            )
        records.append((path, int(label)))
    if not records:
        raise DatasetError(f"RegDB split file {file} lists no image; restore it.")
    return records


def _same_labels(root, split: str, trial: int, vis: list, the: list) -> None:
    """Both modalities of a split must cover the same identities."""
    only_v = sorted({r[1] for r in vis} - {r[1] for r in the})
    only_t = sorted({r[1] for r in the} - {r[1] for r in vis})
    if only_v or only_t:
        raise DatasetError(
            f"RegDB {split} split {trial} under {str(root)!r}: idx/{split}_visible_{trial}.txt "
            f"and idx/{split}_thermal_{trial}.txt disagree on labels (only visible: "
            f"{only_v[:10]}, only thermal: {only_t[:10]}). Restore the idx files."
        )


def train_set(root: str | os.PathLike, trial: int) -> tuple[list[Record], list[Record]]:
    """Training images of one trial as ``(path, label, cam)``, visible and thermal.

    Raises:
        DatasetError: Labels not contiguous from 0, or the two modalities' labels differ.
    """
    check_root(root)
    out = []
    for modality, cam in (("visible", VISIBLE_CAM), ("thermal", THERMAL_CAM)):
        pairs = read_idx(root, "train", modality, trial)
        labels = sorted({label for _, label in pairs})
        if labels != list(range(len(labels))):
            raise DatasetError(
                f"RegDB split file {os.path.join(root, 'idx', f'train_{modality}_{trial}.txt')}"
                f" has labels {labels[0]}..{labels[-1]} ({len(labels)} distinct); training "
                "labels must be 0..n-1 without gaps. Relabel or restore the file."
            )
        out.append([(p, label, cam) for p, label in pairs])
    _same_labels(root, "train", trial, out[0], out[1])
    return out[0], out[1]


def test_set(root: str | os.PathLike, trial: int) -> tuple[list[Record], list[Record]]:
    """Test images of one trial as ``(path, pid, cam)`` with pid = the file's label.

    Raises:
        DatasetError: The two modalities' identities differ.
    """
    check_root(root)
    vis = [(p, pid, VISIBLE_CAM) for p, pid in read_idx(root, "test", "visible", trial)]
    the = [(p, pid, THERMAL_CAM) for p, pid in read_idx(root, "test", "thermal", trial)]
    _same_labels(root, "test", trial, vis, the)
    return vis, the


def listed_paths(root: str | os.PathLike) -> list[str]:
    """Sorted unique image paths named by every idx file present (one cache for all trials).

    Raises:
        DatasetError: No idx file is present.
    """
    check_root(root)
    paths: set[str] = set()
    for trial in TRIALS:
        for split in SPLITS:
            for modality in MODALITIES:
                if os.path.isfile(os.path.join(root, "idx", f"{split}_{modality}_{trial}.txt")):
                    paths.update(p for p, _ in read_idx(root, split, modality, trial))
    if not paths:
        raise DatasetError(
            f"RegDB root {str(root)!r} has no idx/{{train,test}}_{{visible,thermal}}_{{t}}.txt "
            f"file for t in 1..10. Restore the idx folder.\n{_LAYOUT}"
        )
    return sorted(paths)


# --------------------------------------------------------------------------- the protocol
def _test_records(root: str, trial: int | None) -> tuple[list[Record], list[int]]:
    vis, the = test_set(root, trial)
    return vis + the, [VISIBLE] * len(vis) + [INFRARED] * len(the)


def _searches(root: str, trial: int | None, records: list[Record], settings, shots: int
              ) -> list[Search]:
    """Each direction over the split's whole test set (no draw: one search per direction)."""
    cams = np.array([r[2] for r in records])
    vis = np.flatnonzero(cams == VISIBLE_CAM).astype(np.int64)
    the = np.flatnonzero(cams == THERMAL_CAM).astype(np.int64)
    sides = {"visible2thermal": (vis, the), "thermal2visible": (the, vis)}
    return [Search(d, trial, *sides[d]) for d in settings]


PROTOCOL = DatasetProtocol(
    name="regdb",
    title="RegDB",
    metric="regdb",  # nothing removed; image-level CMC
    settings=DIRECTIONS,
    setting_field="direction",
    fixed_labels={"mode": None},
    trials=TRIALS,
    trial_selects_training=True,
    trial_hint="RegDB needs a split 1..10",
    default_settings=lambda mode: DIRECTIONS,  # there is no search mode
    train_lists=train_set,
    test_records=_test_records,
    searches=_searches,
    shared_cache_paths=listed_paths,  # the ten splits of a sweep share one cache
    noise_keeps_every_identity=True,  # DART's RegDB rule: ten images per identity and modality
)
