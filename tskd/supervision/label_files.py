"""Label draws as ``.npy`` arrays: DART's noise files, and the weak split in the same style.

DART (``data_loader.py``, ``SYSUData`` / ``RegDBData``) saves a noise draw under a prefix ``P``
(``<data>/<rate %.1f>_<noise mode>``, e.g. ``SYSU-MM01/0.2_sym``; RegDB ``..._trial<t>``) as
eight 1-D arrays, per modality ``m`` in (``rgb``, ``ir``)::

    P_m.npy            the training labels with noise (one per training row)
    P_m_noiseIdx.npy   the 0-based rows whose label was replaced (sorted)
    P_m_cleanIdx.npy   the other rows (DART builds them from a set: any order)
    P_m_true.npy       the true training labels

DART's arrays are int64 from ``np.array`` of Python ints, labels 0-based as in the training
lists. Reading accepts any integer dtype (or integral floats), any index order and labels stored
1-based, and refuses everything that would make a run train on labels other than the file's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tskd.core.errors import DatasetError, InputError
from tskd.core.files import write_atomic
from tskd.supervision.draws import MODALITIES, LabelSplit, NoiseDraw, as_labels

DART_MODALITY = {"visible": "rgb", "infrared": "ir"}
NOISE_ROLES = {"labels": "", "noisy": "_noiseIdx", "clean": "_cleanIdx", "true": "_true"}
SPLIT_ROLES = {"labelled": "_labelledIdx", "unlabelled": "_unlabelledIdx", "true": "_true"}
_FIX = ("supervision.noise_file must be the prefix P of DART's eight files P_{rgb,ir}.npy, "
        "P_{rgb,ir}_noiseIdx.npy, P_{rgb,ir}_cleanIdx.npy and P_{rgb,ir}_true.npy (DART: "
        "<data>/0.2_sym; RegDB: <data>/0.2_sym_trial<t>)")


def _path(prefix, modality: str, suffix: str) -> Path:
    prefix = Path(prefix)
    return prefix.parent / f"{prefix.name}_{DART_MODALITY[modality]}{suffix}.npy"


def noise_file_paths(prefix) -> dict[tuple[str, str], Path]:
    """DART's eight file names for ``prefix``, keyed ``(modality, role)`` (:data:`NOISE_ROLES`)."""
    return {(m, role): _path(prefix, m, suffix)
            for m in MODALITIES for role, suffix in NOISE_ROLES.items()}


def split_file_paths(prefix) -> dict[tuple[str, str], Path]:
    """``<prefix>_{rgb,ir}_{labelledIdx,unlabelledIdx,true}.npy`` keyed ``(modality, role)``."""
    return {(m, role): _path(prefix, m, suffix)
            for m in MODALITIES for role, suffix in SPLIT_ROLES.items()}


def _save(path: Path, values) -> Path:
    arr = np.asarray(values, dtype=np.int64)
    write_atomic(path, lambda fh: np.save(fh, arr, allow_pickle=False))
    return path


def _trues(visible_true, infrared_true) -> dict[str, np.ndarray]:
    return {m: as_labels(t, f"{m} training labels")
            for m, t in zip(MODALITIES, (visible_true, infrared_true))}


def write_noise_files(draw: NoiseDraw, visible_true, infrared_true, prefix) -> list[Path]:
    """Write ``draw`` as DART's eight arrays under ``prefix`` (int64, 0-based); their paths."""
    trues, written = _trues(visible_true, infrared_true), []
    for m in MODALITIES:
        labels, true, clean = draw.labels(m), trues[m], draw.clean(m)
        if labels.size != true.size or not np.array_equal(labels[clean], true[clean]):
            raise InputError(f"the {m} noise draw does not belong to these training labels "
                             f"({labels.size} draw rows, {true.size} labels)")
        arrays = {"labels": labels, "noisy": draw.noisy(m), "clean": clean, "true": true}
        written += [_save(_path(prefix, m, NOISE_ROLES[r]), arrays[r]) for r in NOISE_ROLES]
    return written


def _missing(paths: dict, prefix, fix: str) -> None:
    absent = [p for p in paths.values() if not p.exists()]
    if not absent:
        return
    prefix = Path(prefix)
    hint = ""
    trials = sorted(prefix.parent.glob(f"{prefix.name}_trial*_rgb.npy"))
    if trials:  # a RegDB draw: DART puts the trial between the prefix and the modality
        hint = f" (found {trials[0].name}: give the prefix with its trial, " \
               f"{prefix.name}_trial<t>)"
    names = ", ".join(str(p) for p in absent)
    raise DatasetError(f"label file(s) missing for prefix {str(prefix)!r}: {names}{hint}. {fix}")


def _load_rows(path: Path, size: int | None = None) -> np.ndarray:
    """A 1-D integer array from ``path`` (integral floats accepted), checked against ``size``."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DatasetError(f"cannot read {path} as a .npy array ({err}); restore the file") \
            from err
    if arr.ndim != 1:
        raise DatasetError(f"{path} holds an array of shape {arr.shape}; expected 1-D")
    if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() \
            and np.array_equal(arr, np.round(arr)):
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise DatasetError(f"{path} holds {arr.dtype} values; expected integer labels or rows")
    if size is not None and arr.size != size:
        raise DatasetError(f"{path} holds {arr.size} entries but the training list has {size} "
                           "images: the file was made for another dataset or trial")
    return arr.astype(np.int64)


def _match_true(path: Path, stored: np.ndarray, true: np.ndarray) -> int:
    """The base shift of the stored true labels (0, or 1 for 1-based files), else DatasetError."""
    for shift in (0, 1):
        if np.array_equal(stored, true + shift):
            return shift
    row = int(np.flatnonzero(stored != true)[0])
    raise DatasetError(
        f"{path}: the stored true labels differ from this dataset's training list (row {row}: "
        f"{stored[row]} in the file, {true[row]} in the list): the file was made for another "
        "dataset, trial or labelling. Use the draw made for this one, or leave the file setting "
        "empty to draw afresh")


def _check_partition(paths: tuple[Path, Path], a: np.ndarray, b: np.ndarray, n: int) -> None:
    """``a`` and ``b`` (rows from ``paths``) must split 0..n-1: in range, disjoint, complete."""
    for path, rows in zip(paths, (a, b)):
        bad = rows[(rows < 0) | (rows >= n)]
        if bad.size:
            raise DatasetError(f"{path}: row {bad[0]} is out of range 0..{n - 1} (the file is "
                               "for a larger list, or 1-based); restore the file")
        uniq, counts = np.unique(rows, return_counts=True)
        if (counts > 1).any():
            raise DatasetError(f"{path}: row {uniq[counts > 1][0]} is listed twice")
    both = np.intersect1d(a, b)
    if both.size:
        raise DatasetError(f"{paths[0]} and {paths[1]} both list row {both[0]} "
                           f"({both.size} rows in both); restore the files")
    if a.size + b.size != n:
        gap = np.setdiff1d(np.arange(n), np.concatenate([a, b]))[0]
        raise DatasetError(f"{paths[0]} and {paths[1]} together miss row {gap} of 0..{n - 1} "
                           f"({n - a.size - b.size} rows in neither); restore the files")


def read_noise_files(prefix, visible_true, infrared_true) -> NoiseDraw:
    """Read a DART-format draw under ``prefix`` (see the module doc) for these training labels.

    Raises:
        DatasetError: naming the file, when one is missing or unreadable, lengths differ from the
            training lists, rows are out of range, repeated, in both sets or in neither, the
            stored true labels are not this dataset's, a clean row's label is not its true
            label, or a noisy row's label is its true one or no identity of that modality.
    """
    trues, paths = _trues(visible_true, infrared_true), noise_file_paths(prefix)
    _missing(paths, prefix, _FIX)
    out = {}
    for m in MODALITIES:
        true, p = trues[m], {r: paths[m, r] for r in NOISE_ROLES}
        shift = _match_true(p["true"], _load_rows(p["true"], true.size), true)
        labels = _load_rows(p["labels"], true.size) - shift
        noisy, clean = _load_rows(p["noisy"]), _load_rows(p["clean"])
        _check_partition((p["noisy"], p["clean"]), noisy, clean, true.size)
        wrong = clean[labels[clean] != true[clean]]
        if wrong.size:
            raise DatasetError(f"{p['labels']}: row {wrong[0]} is listed clean in {p['clean']} "
                               f"but its label {labels[wrong[0]]} is not its true label "
                               f"{true[wrong[0]]}; the files are from different draws")
        kept = noisy[labels[noisy] == true[noisy]]
        if kept.size:
            raise DatasetError(f"{p['labels']}: row {kept[0]} is listed noisy in {p['noisy']} "
                               "but keeps its true label; the files are from different draws")
        foreign = noisy[~np.isin(labels[noisy], true)]
        if foreign.size:
            raise DatasetError(f"{p['labels']}: row {foreign[0]} has label "
                               f"{labels[foreign[0]]}, no identity of the {m} training list")
        out[m] = (labels, np.sort(noisy))
    return NoiseDraw(visible=out["visible"][0], infrared=out["infrared"][0],
                     visible_noisy=out["visible"][1], infrared_noisy=out["infrared"][1])


def write_split_files(split: LabelSplit, visible_true, infrared_true, prefix) -> list[Path]:
    """``<prefix>_{rgb,ir}_{labelledIdx,unlabelledIdx,true}.npy`` (int64, 0-based); their paths."""
    trues, written = _trues(visible_true, infrared_true), []
    for m in MODALITIES:
        if split.labelled_mask(m).size != trues[m].size:
            raise InputError(f"the {m} split covers {split.labelled_mask(m).size} rows but there "
                             f"are {trues[m].size} training labels")
        arrays = {"labelled": split.labelled(m), "unlabelled": split.unlabelled(m),
                  "true": trues[m]}
        written += [_save(_path(prefix, m, SPLIT_ROLES[r]), arrays[r]) for r in SPLIT_ROLES]
    return written


def read_split_files(prefix, visible_true, infrared_true) -> LabelSplit:
    """Read a split written by :func:`write_split_files`, checked against these labels."""
    trues, paths = _trues(visible_true, infrared_true), split_file_paths(prefix)
    _missing(paths, prefix, "Give the prefix P of P_{rgb,ir}_{labelledIdx,unlabelledIdx,true}.npy")
    rows = {}
    for m in MODALITIES:
        true, p = trues[m], {r: paths[m, r] for r in SPLIT_ROLES}
        if _match_true(p["true"], _load_rows(p["true"], true.size), true) != 0:
            raise DatasetError(f"{p['true']}: labels are 1-based; this format stores them 0-based")
        rows[m] = _load_rows(p["labelled"]), _load_rows(p["unlabelled"])
        _check_partition((p["labelled"], p["unlabelled"]), *rows[m], true.size)
    return LabelSplit(visible_labelled=rows["visible"][0], visible_unlabelled=rows["visible"][1],
                      infrared_labelled=rows["infrared"][0],
                      infrared_unlabelled=rows["infrared"][1])


def write_pseudo_label_files(prefix, visible: np.ndarray, infrared: np.ndarray) -> list[Path]:
    """``<prefix>_{rgb,ir}_pseudo.npy``: the current training labels (ground truth at labelled
    rows, pseudo-labels at unlabelled rows), int64; their paths."""
    return [_save(_path(prefix, m, "_pseudo"), as_labels(v, f"{m} pseudo-labels"))
            for m, v in zip(MODALITIES, (visible, infrared))]
