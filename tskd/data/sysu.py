"""SYSU-MM01: raw folder layout, training lists and the standard query/gallery protocol.

Dataset (Wu et al., "RGB-Infrared Cross-Modality Person Re-Identification", ICCV 2017):
491 identities seen by 6 cameras. cam1 and cam2 are indoor visible cameras, cam4 and cam5
outdoor visible cameras, cam3 an indoor infrared camera (same room as cam2) and cam6 an outdoor
infrared camera. The official split lists 296 training + 99 validation identities, used together
as the 395 training identities (labels 0..394 in ascending raw-id order), and 96 test identities.
Real counts: 22,258 visible + 11,909 infrared training images; 3,803 query images; the
single-shot all-search gallery holds 301 images per trial.

Layout::

    ROOT/cam1 ... cam6/<pid as %04d>/<nnnn>.jpg
    ROOT/exp/train_id.txt  val_id.txt  test_id.txt   (comma-separated integer ids)

The official id files hold one line; every line is read (commas and/or whitespace separate ids)
so a list wrapped by an editor is not silently cut. The training (train ∪ val) and test ids must
be disjoint.

Not every identity appears in every camera (validation ids have no cam1/cam2 folders).

Protocol (the one shared by the AGW / DDAG / CAJ code family, reproduced exactly):
query = every cam3 and cam6 image of the test ids (ids ascending, cam3 then cam6, files sorted),
the same for both search modes. Gallery trial ``t`` (0..9): one ``random.Random(t)`` stream; for
each test id ascending and each visible camera of the mode (all: 1, 2, 4, 5; indoor: 1, 2) whose
folder exists, one ``rng.choice`` over the sorted file paths. Multi-shot (``shots > 1``) is our
extension: ``rng.sample`` of ``min(shots, n)`` files per (id, camera) from the same stream.

Identity and camera always come from path parts (``.../camN/<pid>/file``), never from fixed
character offsets, so a root path containing digits or "cam" cannot shift them. Only files with
an image extension are listed (the reference code lists every file; on a clean copy of the
dataset the two agree).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

from tskd.core.errors import DatasetError
from tskd.data.cache import standard_train_arrays
from tskd.data.layout import read_list, require_folders, sorted_images
from tskd.data.protocol import INFRARED, VISIBLE, DatasetProtocol, Record, Search, indices_of

log = logging.getLogger(__name__)

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)
GALLERY_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SPLITS = ("train", "val", "test")

_LAYOUT = (
    "Expected layout:\n"
    "  ROOT/cam1 ... ROOT/cam6/<pid as %04d>/<image>.jpg\n"
    "  ROOT/exp/train_id.txt, val_id.txt, test_id.txt"
)


def check_root(root: str | os.PathLike) -> Path:
    """Check that ``root`` looks like a SYSU-MM01 folder (cam1..cam6 and exp/).

    Raises:
        DatasetError: The root or any of cam1..cam6 / exp is missing (all are listed).
    """
    folders = [f"cam{c}" for c in range(1, 7)] + ["exp"]
    return require_folders(root, "SYSU-MM01", folders, "cam1..cam6 and exp/", _LAYOUT)


def _id_file(root: str | os.PathLike, split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"Unknown SYSU-MM01 split {split!r}; valid splits: {', '.join(SPLITS)}")
    return os.path.join(root, "exp", f"{split}_id.txt")


def _read_id_lines(root: str | os.PathLike, split: str) -> list[tuple[int, int]]:
    """``(id, line number)`` for every id of ``ROOT/exp/{split}_id.txt``, in file order.

    The official files hold one comma-separated line, but copies re-saved by editors or scripts
    wrap the list over several lines or use spaces; reading only the first line would silently
    drop ids, so every line is read.
    """
    file = _id_file(root, split)
    if not os.path.isfile(file):
        raise DatasetError(
            f"SYSU-MM01 split file {file} is missing. Restore it from the dataset archive.\n"
            f"{_LAYOUT}"
        )
    # read_list drops a byte-order mark (Windows editors add one), which would otherwise be glued
    # to the first id and make it "not an integer".
    lines = read_list(file, "SYSU-MM01 split file").splitlines()
    found: list[tuple[int, int]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        # A list wrapped over lines may end a line with the separator or start the next with it;
        # an empty field *between* two commas is still refused (an id may have been lost there).
        if fields[-1] == "":
            fields.pop()
        if fields and fields[0] == "":
            fields.pop(0)
        for field in fields:
            for token in field.split() or [field]:
                if not (token.isascii() and token.isdigit()):
                    raise DatasetError(
                        f"SYSU-MM01 split file {file}, line {number}: token {token!r} is not a "
                        f"non-negative integer (line: {line[:120]!r}). The file must list integer "
                        "ids separated by commas, spaces or line breaks; fix or restore it."
                    )
                found.append((int(token), number))
    if not found:
        raise DatasetError(
            f"SYSU-MM01 split file {file} is empty: it must list the ids, comma-separated "
            "(e.g. '1,2,4'). Restore it from the dataset archive."
        )
    lines_of: dict[int, list[int]] = {}
    for pid, number in found:
        lines_of.setdefault(pid, []).append(number)
    dup = {pid: numbers for pid, numbers in lines_of.items() if len(numbers) > 1}
    if dup:
        where = "; ".join(
            f"{pid} on lines {', '.join(map(str, numbers))}" for pid, numbers in sorted(dup.items())
        )
        raise DatasetError(
            f"SYSU-MM01 split file {file} repeats id(s) {sorted(dup)} ({where}); list each id "
            "once: delete the repeats or restore the file from the dataset archive."
        )
    return found


def read_ids(root: str | os.PathLike, split: str) -> list[int]:
    """Read the identity list ``ROOT/exp/{split}_id.txt``.

    Every line is read; ids are separated by commas and/or whitespace, blank lines are skipped
    and a leading UTF-8 byte-order mark is ignored.

    Args:
        root: Dataset root.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        The ids in file order.

    Raises:
        DatasetError: Unknown split, missing/empty file, a token that is not a non-negative
            integer, or a repeated id (the message names the file and line).
    """
    return [pid for pid, _ in _read_id_lines(root, split)]


def split_ids(root: str | os.PathLike) -> tuple[list[int], list[int]]:
    """Training ids (train ∪ val) and test ids, both ascending, checked to be disjoint.

    Args:
        root: Dataset root.

    Returns:
        ``(training ids, test ids)``; the position of an id in the first list is its label.

    Raises:
        DatasetError: Any id file is bad (see :func:`read_ids`), or an id is listed both for
            training (train or val) and for testing: a model evaluated on identities it was
            trained on reports inflated scores, so this is never accepted.
    """
    listed = {split: _read_id_lines(root, split) for split in SPLITS}
    test_line = dict(listed["test"])
    clashes = [
        (pid, split, number)
        for split in ("train", "val")
        for pid, number in listed[split]
        if pid in test_line
    ]
    if clashes:
        shown = "; ".join(
            f"id {pid}: {_id_file(root, split)} line {number} and "
            f"{_id_file(root, 'test')} line {test_line[pid]}"
            for pid, split, number in clashes[:5]
        )
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise DatasetError(
            f"SYSU-MM01 under {str(root)!r}: {len(clashes)} id(s) listed both for training and "
            f"for testing: {shown}{more}. Training (train ∪ val) and test ids must be disjoint; "
            "remove each id from one of the lists or restore exp/ from the dataset archive."
        )
    train = sorted({pid for split in ("train", "val") for pid, _ in listed[split]})
    return train, sorted(test_line)


def list_id_images(root: str | os.PathLike, cam: int, pid: int) -> list[str]:
    """Sorted image paths of one identity in one camera (``[]`` if that folder does not exist).

    Raises:
        DatasetError: The folder exists but holds no image.
    """
    return sorted_images(os.path.join(root, f"cam{cam}", f"{pid:04d}"), "SYSU-MM01")


def train_pids(root: str | os.PathLike) -> list[int]:
    """Raw training ids (train ∪ val) ascending; position = training label.

    Raises:
        DatasetError: A bad id file, or an id shared with the test list (see :func:`split_ids`).
    """
    check_root(root)
    return split_ids(root)[0]


def train_set(root: str | os.PathLike) -> tuple[list[Record], list[Record]]:
    """Training images as ``(path, label, cam)`` records, visible and infrared.

    Order: for each training id ascending, visible cams 1, 2, 4, 5 (infrared list: cams 3, 6),
    files sorted. ``label`` is the rank of the raw id among the training ids.

    Raises:
        DatasetError: A training id has no visible or no infrared image at all.
    """
    visible: list[Record] = []
    infrared: list[Record] = []
    for label, pid in enumerate(train_pids(root)):
        for cams, out, name in ((VISIBLE_CAMS, visible, "visible"),
                                (INFRARED_CAMS, infrared, "infrared")):
            found = [(p, label, c) for c in cams for p in list_id_images(root, c, pid)]
            if not found:
                raise DatasetError(
                    f"SYSU-MM01 training id {pid} has no {name} image under {str(root)!r} "
                    f"(cams {', '.join(map(str, cams))}). Restore its images or drop the id "
                    "from exp/train_id.txt / exp/val_id.txt."
                )
            out.extend(found)
    return visible, infrared


def query_set(root: str | os.PathLike) -> list[Record]:
    """Query images ``(path, pid, cam)``: all cam3 then cam6 images of each test id ascending.

    Raises:
        DatasetError: No test id has any infrared image, a bad id file, or an id shared by the
            training and test lists.
    """
    check_root(root)
    query: list[Record] = []
    for pid in split_ids(root)[1]:
        found = [(p, pid, c) for c in INFRARED_CAMS for p in list_id_images(root, c, pid)]
        if not found:
            log.warning("SYSU-MM01 test id %d has no infrared (query) image", pid)
        query.extend(found)
    if not query:
        raise DatasetError(
            f"SYSU-MM01 root {str(root)!r}: no test id in exp/test_id.txt has a cam3/cam6 image; "
            "check the root and the split file."
        )
    return query


def _gallery_cams(mode: str) -> tuple[int, ...]:
    if mode not in GALLERY_CAMS:
        raise DatasetError(
            f"Unknown SYSU-MM01 search mode {mode!r}; valid modes: {', '.join(GALLERY_CAMS)}."
        )
    return GALLERY_CAMS[mode]


def _empty_gallery(root, cams: tuple[int, ...], mode: str) -> DatasetError:
    return DatasetError(
        f"SYSU-MM01 root {str(root)!r}: no test id has an image in cams {cams} "
        f"(mode {mode!r}); check the root and exp/test_id.txt."
    )


def gallery_set(
    root: str | os.PathLike, mode: str = "all", trial: int = 0, shots: int = 1
) -> list[Record]:
    """Gallery of one trial ``(path, pid, cam)``, drawn exactly as the standard code does.

    Args:
        root: Dataset root.
        mode: ``"all"`` (cams 1, 2, 4, 5) or ``"indoor"`` (cams 1, 2).
        trial: Seed of the draw (the standard protocol uses 0..9).
        shots: 1 = single-shot (standard); >1 = up to ``shots`` images per (id, camera),
            our multi-shot extension.

    Raises:
        DatasetError: Unknown mode, ``shots < 1``, or an empty gallery.
    """
    cams = _gallery_cams(mode)
    if shots < 1:
        raise DatasetError(f"gallery shots must be >= 1, got {shots}.")
    check_root(root)
    # One Mersenne-Twister stream per trial, consumed in (id, camera) order: the standard
    # galleries depend on this exact call order.
    rng = random.Random(trial)
    gallery: list[Record] = []
    for pid in split_ids(root)[1]:
        for cam in cams:
            files = list_id_images(root, cam, pid)
            if not files:
                continue
            if shots == 1:
                gallery.append((rng.choice(files), pid, cam))
            else:
                gallery.extend((p, pid, cam) for p in rng.sample(files, min(shots, len(files))))
    if not gallery:
        raise _empty_gallery(root, cams, mode)
    return gallery


def gallery_candidates(root: str | os.PathLike, mode: str = "all") -> list[Record]:
    """Every image any gallery trial of ``mode`` could draw (test ids asc, cams in order, sorted).

    Used to cache the test images once for all trials.
    """
    cams = _gallery_cams(mode)
    check_root(root)
    found = [
        (p, pid, cam)
        for pid in split_ids(root)[1]
        for cam in cams
        for p in list_id_images(root, cam, pid)
    ]
    if not found:
        raise _empty_gallery(root, cams, mode)
    return found


# --------------------------------------------------------------------------- the protocol
def _train_lists(root: str, trial: int | None) -> tuple[list[Record], list[Record]]:
    return train_set(root)  # the gallery trial draws test images only


def _test_records(root: str, trial: int | None) -> tuple[list[Record], list[int]]:
    """Queries, then every image an all-search gallery can draw (indoor's cameras included)."""
    query, candidates = query_set(root), gallery_candidates(root, "all")
    return query + candidates, [INFRARED] * len(query) + [VISIBLE] * len(candidates)


def _searches(root: str, trial: int | None, records: list[Record], settings, shots: int
              ) -> list[Search]:
    """Every mode x trial: the queries against that trial's drawn gallery."""
    row = {r[0]: i for i, r in enumerate(records)}
    # the records are _test_records': the infrared-camera rows are the queries, in their order
    query = indices_of(row, [r for r in records if r[2] in INFRARED_CAMS])
    return [Search(mode, t, query, indices_of(row, gallery_set(root, mode=mode, trial=t,
                                                                shots=shots)))
            for mode in settings for t in PROTOCOL.trial_list(trial)]


PROTOCOL = DatasetProtocol(
    name="sysu",
    title="SYSU-MM01",
    metric="sysu",  # cam3 queries ignore cam2 (same room); identity-level CMC
    settings=tuple(GALLERY_CAMS),
    setting_field="mode",
    fixed_labels={"direction": "infrared2visible"},
    trials=range(10),
    trial_selects_training=False,
    trial_hint="SYSU gallery trials are 0..9 (or null)",
    default_settings=lambda mode: (mode,),  # mode=all|indoor picks the search
    train_lists=_train_lists,
    test_records=_test_records,
    searches=_searches,
    prebuilt_train_arrays=standard_train_arrays,
)
