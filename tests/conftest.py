"""Shared fixtures: the repository root, a data folder and the tiny checkpoint, once per session.

Only fixtures and hooks live here; what tests share as code is in ``tests/helpers/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.entry_runs import REPO


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder shared by the session's end-to-end runs (synthetic sets made on demand)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, data root) of :mod:`helpers.tiny_checkpoint`, shared by the inference,
    export and visualiser tests (built once per session instead of once per module)."""
    from helpers.tiny_checkpoint import make_checkpoint, make_data

    base = tmp_path_factory.mktemp("tiny")
    root = make_data(base / "sysu")
    return make_checkpoint(base / "tiny.ckpt", root), root
