"""LLCM: raw folder layout, training lists and DEEN's query/gallery protocol in both directions.

Dataset (Zhang & Wang, "Diverse Embedding Expansion Network and Low-Light Cross-Modality
Benchmark for Visible-Infrared Person Re-identification" (DEEN), CVPR 2023): 1,064 identities
seen by 9 cameras, each camera holding a visible and a near-infrared sensor, so camera ``k`` of
one modality watches the same scene as camera ``k`` of the other. 713 identities train (labels
0..712, as written in the index files), the other 351 test. The test set has no infrared
camera 3.

Layout::

    ROOT/idx/train_vis.txt  train_nir.txt     lines "relative/path label" (labels 0..712)
    ROOT/idx/test_id.txt                       comma-separated integer test ids
    ROOT/test_vis/cam1 ... cam9/<pid as %04d>/*.jpg
    ROOT/test_nir/cam1, cam2, cam4 ... cam9/<pid as %04d>/*.jpg

Protocol (DEEN's released test code, ``ZYK100/LLCM``: ``DEEN/data_manager.py``,
``DEEN/test.py``, ``AGW/eval_metrics.py``), trials ``t`` = 0..9, mean over the trials:

- ``"infrared2visible"`` (IR->VIS): query = every test_nir image (test ids ascending, cameras
  in the order above, files sorted); gallery of trial ``t`` = one ``random.Random(t)`` stream
  (the same as ``random.seed(t)``), one ``rng.choice`` over the sorted files of each
  (id ascending, visible camera 1..9) whose folder exists.
- ``"visible2infrared"`` (VIS->IR **as DEEN's code computes it**): the infrared side is drawn
  per trial exactly like the gallery above (over the infrared cameras) and the distance matrix
  is evaluated with those *sampled infrared images as the queries* against *every* test_vis
  image as the gallery. The published VIS->IR numbers are this computation, so the query list
  depends on the trial here.
- ``"visible2infrared_literal"`` (our extra setting, not comparable with published numbers):
  the literal reading of VIS->IR, every test_vis image as a query against the sampled infrared
  gallery of the trial.

Metric: :func:`tskd.metrics.evaluate_llcm` (a query ignores the gallery items of its own
identity from its own camera number; identity-level CMC).

Identity and camera always come from path parts (``.../cam<k>/<pid>/file``), never by splitting
the whole path on "cam" as the reference code does (which breaks on a root containing "cam").
Only files with an image extension are listed (the reference code lists every file; on a clean
copy of the dataset the two agree). ``test_id.txt`` is read in full: ids on every line count (the
reference code reads the first line only; a warning is logged if any other line holds ids).
"""

from __future__ import annotations

import logging
import operator
import os
import random
from pathlib import Path

from tskd.core.errors import DatasetError
from tskd.data.layout import CAM_DIR, list_lines, require_folders, sorted_images
from tskd.data.protocol import INFRARED, VISIBLE, DatasetProtocol, Record, Search, indices_of

log = logging.getLogger(__name__)

VISIBLE_CAMS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
INFRARED_CAMS = (1, 2, 4, 5, 6, 7, 8, 9)  # no infrared camera 3 in the test set
MODALITIES = {"visible": ("test_vis", VISIBLE_CAMS), "infrared": ("test_nir", INFRARED_CAMS)}
TRAIN_FILES = {"visible": "train_vis.txt", "infrared": "train_nir.txt"}
SETTINGS = ("infrared2visible", "visible2infrared", "visible2infrared_literal")
TRIALS = range(10)
UNKNOWN_CAM = 0  # training paths without a cam<k> folder: the camera is not recorded

_LAYOUT = (
    "Expected layout:\n"
    "  ROOT/idx/train_vis.txt, train_nir.txt ('relative/path label' per line), test_id.txt\n"
    "  ROOT/test_vis/cam1 ... cam9/<pid as %04d>/<image>.jpg\n"
    "  ROOT/test_nir/cam1, cam2, cam4 ... cam9/<pid as %04d>/<image>.jpg"
)


def check_root(root: str | os.PathLike) -> Path:
    """Check that ``root`` looks like an LLCM folder (``idx/``, ``test_vis/``, ``test_nir/``).

    Raises:
        DatasetError: The root or any of those folders is missing (all are listed).
    """
    return require_folders(root, "LLCM", ("idx", "test_vis", "test_nir"),
                           "idx/, test_vis/ and test_nir/", _LAYOUT)


def read_test_ids(root: str | os.PathLike) -> list[int]:
    """Test identities from ``ROOT/idx/test_id.txt``: comma-separated ints on any line.

    Returns:
        The ids in file order.

    Raises:
        DatasetError: Missing file, no id at all, a token that is not a non-negative integer, or
            a repeated id.
    """
    file = os.path.join(root, "idx", "test_id.txt")
    if not os.path.isfile(file):
        raise DatasetError(
            f"LLCM split file {file} is missing. Restore idx/ from the dataset archive.\n{_LAYOUT}"
        )
    ids: list[int] = []
    lines_with_ids = 0
    for number, raw in enumerate(list_lines(file, "LLCM split file"), start=1):
        tokens = [t.strip() for t in raw.strip().split(",")]
        if tokens[-1] == "":  # tolerate a trailing comma (and blank lines)
            tokens.pop()
        if tokens:
            lines_with_ids += 1
        for token in tokens:
            if not (token.isascii() and token.isdigit()):
                raise DatasetError(
                    f"LLCM split file {file}, line {number}: token {token!r} is not a "
                    f"non-negative integer (line: {raw.strip()[:120]!r}). The file must hold "
                    "comma-separated ids; fix or restore it."
                )
            ids.append(int(token))
    if not ids:
        raise DatasetError(
            f"LLCM split file {file} lists no id: it must hold the test ids, comma-separated "
            "(e.g. '1,2,4'). Restore it from the dataset archive."
        )
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DatasetError(f"LLCM split file {file} repeats id(s) {dup[:20]}; list each id once.")
    if lines_with_ids > 1:
        log.warning("LLCM %s holds ids on %d lines; all are used, but DEEN's code reads only the "
                    "first line, so results may not be comparable", file, lines_with_ids)
    return ids


def list_id_images(root: str | os.PathLike, modality: str, cam: int, pid: int) -> list[str]:
    """Sorted test image paths of one identity in one camera (``[]`` if there is no folder).

    Raises:
        DatasetError: Unknown modality, or the folder exists but holds no image.
    """
    folder = os.path.join(root, _modality(modality)[0], f"cam{cam}", f"{pid:04d}")
    return sorted_images(folder, "LLCM")


def _modality(modality: str) -> tuple[str, tuple[int, ...]]:
    if modality not in MODALITIES:
        raise DatasetError(
            f"Unknown LLCM modality {modality!r}; valid: {', '.join(MODALITIES)}."
        )
    return MODALITIES[modality]


def _check_trial(trial) -> int:
    """The trial as an int: ``random.Random`` would also take a string and draw other images."""
    try:
        value = None if isinstance(trial, bool) else operator.index(trial)
    except TypeError:
        value = None
    if value is None or value < 0:
        raise DatasetError(
            f"LLCM trial {trial!r} must be a non-negative integer (the standard protocol "
            f"uses {TRIALS.start}..{TRIALS.stop - 1}; set dataset.trial)."
        )
    return value


def all_test_images(root: str | os.PathLike, modality: str) -> list[Record]:
    """Every test image of a modality ``(path, pid, cam)``: ids asc, cameras in order, sorted.

    This is the full query side of DEEN's IR->VIS (infrared) and the full gallery of its
    VIS->IR (visible); it is also every image any trial can draw, so caching it once serves all
    trials.

    Raises:
        DatasetError: Unknown modality, or no test id has an image in this modality.
    """
    folder, cams = _modality(modality)
    check_root(root)
    found: list[Record] = []
    for pid in sorted(read_test_ids(root)):
        mine = [(p, pid, cam) for cam in cams for p in list_id_images(root, modality, cam, pid)]
        if not mine:
            log.warning("LLCM test id %d has no %s image", pid, modality)
        found.extend(mine)
    if not found:
        raise _empty(root, folder)
    return found


def sampled_images(root: str | os.PathLike, modality: str, trial: int = 0) -> list[Record]:
    """One image per (test id, camera) of a modality, drawn for ``trial`` as DEEN draws them.

    One ``random.Random(trial)`` stream, consumed with one ``choice`` over the sorted files of
    each (id ascending, camera in order) whose folder exists: the standard lists depend on this
    exact call order.

    Raises:
        DatasetError: Unknown modality, a bad trial, or nothing to draw from.
    """
    folder, cams = _modality(modality)
    rng = random.Random(_check_trial(trial))
    check_root(root)
    drawn: list[Record] = []
    for pid in sorted(read_test_ids(root)):
        for cam in cams:
            files = list_id_images(root, modality, cam, pid)
            if files:
                drawn.append((rng.choice(files), pid, cam))
    if not drawn:
        raise _empty(root, folder)
    return drawn


def _empty(root, folder: str) -> DatasetError:
    return DatasetError(
        f"LLCM root {str(root)!r}: no test id of idx/test_id.txt has an image under {folder}/; "
        f"check the root and the split file.\n{_LAYOUT}"
    )


def _setting(setting: str) -> str:
    if setting not in SETTINGS:
        raise DatasetError(
            f"Unknown LLCM setting {setting!r}; valid: {', '.join(SETTINGS)} (visible2infrared is "
            "DEEN's computation with sampled infrared queries; visible2infrared_literal is our "
            "visible-query reading)."
        )
    return setting


def query_set(root: str | os.PathLike, setting: str, trial: int = 0) -> list[Record]:
    """Query rows ``(path, pid, cam)`` of one trial, in the role the metric gives them.

    Args:
        root: Dataset root.
        setting: ``"infrared2visible"`` (all test_nir images), ``"visible2infrared"`` (DEEN:
            the infrared images sampled for ``trial``) or ``"visible2infrared_literal"``
            (all test_vis images).
        trial: Seed of the draw (0..9 in the standard protocol); only ``"visible2infrared"``
            depends on it.

    Raises:
        DatasetError: Unknown setting, bad trial, or an empty list.
    """
    _setting(setting)
    _check_trial(trial)
    if setting == "infrared2visible":
        return all_test_images(root, "infrared")
    if setting == "visible2infrared":
        return sampled_images(root, "infrared", trial)
    return all_test_images(root, "visible")


def gallery_set(root: str | os.PathLike, setting: str, trial: int = 0) -> list[Record]:
    """Gallery columns ``(path, pid, cam)`` of one trial, in the role the metric gives them.

    Args:
        root: Dataset root.
        setting: ``"infrared2visible"`` (visible images sampled for ``trial``),
            ``"visible2infrared"`` (DEEN: all test_vis images) or
            ``"visible2infrared_literal"`` (infrared images sampled for ``trial``).
        trial: Seed of the draw (0..9 in the standard protocol).

    Raises:
        DatasetError: Unknown setting, bad trial, or an empty list.
    """
    _setting(setting)
    _check_trial(trial)
    if setting == "infrared2visible":
        return sampled_images(root, "visible", trial)
    if setting == "visible2infrared":
        return all_test_images(root, "visible")
    return sampled_images(root, "infrared", trial)


def _train_camera(rel: str) -> int:
    """Camera of a training path: the nearest ``cam<k>`` folder of the relative path, if any."""
    for part in reversed(Path(rel).parts[:-1]):
        match = CAM_DIR.fullmatch(part)
        if match:
            return int(match.group(1))
    return UNKNOWN_CAM


def read_train_file(root: str | os.PathLike, modality: str) -> list[Record]:
    """Read ``ROOT/idx/train_vis.txt`` or ``train_nir.txt`` as ``(path, label, cam)`` records.

    Paths are joined onto ``root``; ``cam`` is read from a ``cam<k>`` folder of the listed path
    (``UNKNOWN_CAM`` = 0 when there is none; training uses labels only).

    Raises:
        DatasetError: Missing file, malformed line, absolute or escaping path, missing image,
            repeated path, or no line at all. The message names the file and line.
    """
    if modality not in TRAIN_FILES:
        raise DatasetError(f"Unknown LLCM modality {modality!r}; valid: {', '.join(TRAIN_FILES)}.")
    file = os.path.join(root, "idx", TRAIN_FILES[modality])
    if not os.path.isfile(file):
        raise DatasetError(
            f"LLCM training list {file} is missing. Restore idx/ from the dataset archive.\n"
            f"{_LAYOUT}"
        )
    records: list[Record] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(list_lines(file, "LLCM training list"), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.rsplit(maxsplit=1)  # the path is everything before the last field
        label = fields[-1]
        if len(fields) != 2 or not (label.isascii() and label.isdigit()):
            raise DatasetError(
                f"LLCM training list {file}, line {number}: {line[:120]!r} is malformed; "
                "expected 'relative/path label' with a non-negative integer label (e.g. "
                "'nir/cam1/0001/0001.jpg 0'). Fix or restore the file."
            )
        rel = fields[0]
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise DatasetError(
                f"LLCM training list {file}, line {number}: {rel!r} must be a path relative "
                "to the dataset root without '..'. Restore the file from the archive."
            )
        if rel in first_line:
            raise DatasetError(
                f"LLCM training list {file}, line {number} repeats {rel!r} (first on line "
                f"{first_line[rel]}); list each image once."
            )
        first_line[rel] = number
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise DatasetError(
                f"LLCM training list {file}, line {number} lists {path}, which does not "
                "exist. Restore the image or check dataset.root."
            )
        records.append((path, int(label), _train_camera(rel)))
    if not records:
        raise DatasetError(f"LLCM training list {file} lists no image; restore it.")
    return records


def train_set(root: str | os.PathLike) -> tuple[list[Record], list[Record]]:
    """Training images as ``(path, label, cam)`` records, visible and infrared, in file order.

    Labels are taken from the index files as written (0..712 on the real dataset).

    Raises:
        DatasetError: Any error of :func:`read_train_file`; labels not 0..n-1 without gaps; an
            identity missing from one modality; an image listed in both files.
    """
    check_root(root)
    visible, infrared = read_train_file(root, "visible"), read_train_file(root, "infrared")
    files = {name: os.path.join(root, "idx", TRAIN_FILES[name]) for name in TRAIN_FILES}
    labels = {name: {r[1] for r in recs} for name, recs in (("visible", visible),
                                                              ("infrared", infrared))}
    for name, found in labels.items():
        if sorted(found) != list(range(len(found))):
            gaps = sorted(set(range(max(found) + 1)) - found)
            raise DatasetError(
                f"LLCM training list {files[name]} has labels {min(found)}..{max(found)} "
                f"({len(found)} distinct, missing {gaps[:10]}); training labels must be "
                "0..n-1 without gaps. Relabel or restore the file."
            )
    only_v = sorted(labels["visible"] - labels["infrared"])
    only_i = sorted(labels["infrared"] - labels["visible"])
    if only_v or only_i:
        raise DatasetError(
            f"LLCM training lists {files['visible']} and {files['infrared']} disagree: every "
            f"identity needs both modalities (only visible: {only_v[:10]}, only infrared: "
            f"{only_i[:10]}). Restore the idx files."
        )
    both = sorted({r[0] for r in visible} & {r[0] for r in infrared})
    if both:
        raise DatasetError(
            f"LLCM image {both[0]} is listed in both {files['visible']} and "
            f"{files['infrared']} ({len(both)} such images); an image has one modality. "
            "Restore the idx files."
        )
    return visible, infrared


# --------------------------------------------------------------------------- the protocol
STANDARD_SETTINGS = ("infrared2visible", "visible2infrared")  # what DEEN reports


def _train_lists(root: str, trial: int | None) -> tuple[list[Record], list[Record]]:
    return train_set(root)  # the trial draws test images only


def _test_records(root: str, trial: int | None) -> tuple[list[Record], list[int]]:
    """Every test_nir then every test_vis image: everything any setting and trial can use."""
    nir, vis = all_test_images(root, "infrared"), all_test_images(root, "visible")
    return nir + vis, [INFRARED] * len(nir) + [VISIBLE] * len(vis)


def _searches(root: str, trial: int | None, records: list[Record], settings, shots: int
              ) -> list[Search]:
    """Every setting x trial with the query and gallery rows in their metric roles.

    ``shots`` is not used: DEEN draws one image per (identity, camera).
    """
    row = {r[0]: i for i, r in enumerate(records)}
    return [Search(s, t, indices_of(row, query_set(root, s, t)),
                   indices_of(row, gallery_set(root, s, t)))
            for s in settings for t in PROTOCOL.trial_list(trial)]


PROTOCOL = DatasetProtocol(
    name="llcm",
    title="LLCM",
    metric="llcm",  # a query ignores its own identity in its own camera; identity-level CMC
    settings=SETTINGS,
    setting_field="direction",
    fixed_labels={"mode": None},
    trials=TRIALS,
    trial_selects_training=False,
    trial_hint="LLCM test trials are 0..9 (or null)",
    default_settings=lambda mode: STANDARD_SETTINGS,  # there is no search mode
    train_lists=_train_lists,
    test_records=_test_records,
    searches=_searches,
    notes={"visible2infrared": "DEEN: sampled IR as queries, every visible image as the gallery",
           "visible2infrared_literal": "not DEEN's: every visible image as a query"},
)
