"""Run bookkeeping shared by the entry points: a failed run says so in its run dir."""

from __future__ import annotations

import contextlib
import json
import traceback
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def record_failure(run_dir: str | Path) -> Iterator[None]:
    """Write ``status.json`` = failed (with the error) if the body raises, then re-raise.

    A sweep summary reads it to report the run as failed instead of dropping it.
    """
    try:
        yield
    except BaseException as e:
        out = Path(run_dir)
        out.mkdir(parents=True, exist_ok=True)
        status = {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}".splitlines()[0][:2000],
            "traceback": traceback.format_exc()[-20000:],
        }
        (out / "status.json").write_text(json.dumps(status, indent=2))
        raise
