"""What a config value must be: each check returns ``None`` when the value is fine, else the
phrase that completes "``key=value`` must be ...", so every message reads the same.

Option sets are never written here: :func:`one_of` takes the owner's tuple, or a function that
returns it when the value is checked (a dataset registered at run time counts).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection, Mapping
from typing import Any

Check = Callable[[Any], "str | None"]


def is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def number(low: float | None = None, *, strict: bool = False, high: float | None = None,
           high_strict: bool = False) -> Check:
    """A real number (not a bool, not a string) within the bounds."""
    lo = "" if low is None else f"{'>' if strict else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_strict else '<='} {high}"
    want = ("a number " + " and ".join(x for x in (lo, hi) if x)).strip()

    def check(v):
        if not is_number(v):
            return want
        if not math.isfinite(v):  # nan and inf are no settings
            return want.replace("a number", "a finite number", 1)
        if low is not None and (v <= low if strict else v < low):
            return want
        if high is not None and (v >= high if high_strict else v > high):
            return want
        return None
    return check


def integer(low: int | None = None, high: int | None = None) -> Check:
    """A whole number within ``[low, high]``."""
    bounds = " and ".join(x for x in (f">= {low}" if low is not None else "",
                                      f"<= {high}" if high is not None else "") if x)
    want = f"a whole number {bounds}".strip()

    def check(v):
        if not is_int(v) or (low is not None and v < low) or (high is not None and v > high):
            return want
        return None
    return check


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def one_of(options: Collection | Callable[[], Collection]) -> Check:
    """One of the owner's ``options`` (a bool never counts as 1 or 0)."""
    def check(v):
        allowed = tuple(options() if callable(options) else options)
        try:
            ok = v in allowed and not isinstance(v, bool)
        except TypeError:  # an unhashable value (a list) against a set
            ok = False
        return None if ok else "one of " + "|".join(str(a) for a in allowed)
    return check


def optional(inner: Check) -> Check:
    """``inner`` or null."""
    def check(v):
        if v is None:
            return None
        problem = inner(v)
        return None if problem is None else f"{problem} or null"
    return check


def either(*checks: Check) -> Check:
    """Any one of ``checks``; the message lists what each would accept."""
    def check(v):
        wants = [c(v) for c in checks]
        return None if None in wants else " or ".join(wants)
    return check


def text(v) -> str | None:
    return None if isinstance(v, str) and v else "a non-empty string"


def literal(value: Any) -> Check:
    """Exactly ``value`` (e.g. the string ``auto``)."""
    return lambda v: None if v == value and type(v) is type(value) else str(value)


def epochs_list(v) -> str | None:
    """Increasing epoch numbers (a schedule's milestones)."""
    ok = isinstance(v, list | tuple) and all(is_int(x) and x >= 0 for x in v)
    if ok and list(v) == sorted(v):
        return None
    return "a list of increasing whole epoch numbers >= 0, e.g. [20,40]"


def epochs_set(v) -> str | None:
    """Epoch numbers in any order (e.g. epochs to draw a plot for)."""
    if isinstance(v, list | tuple) and all(is_int(x) and x >= 0 for x in v):
        return None
    return "a list of whole epoch numbers >= 0, e.g. [0,10] (or [] for none)"


def names_list(v) -> str | None:
    if isinstance(v, list | tuple) and v and all(isinstance(x, str) and x for x in v):
        return None
    return "a non-empty list of names"


def workers(v) -> str | None:
    return None if v == "auto" or (is_int(v) and v >= 0) else "auto or a whole number >= 0"


def weights(v) -> str | None:
    """``model.pretrained``: a switch or a weights file."""
    return None if isinstance(v, bool) or (isinstance(v, str) and v) else \
        "true, false or the path of a weights file"


def specs(v) -> str | None:
    """A free-form node of ``_target_`` specs (``callbacks``, ``logger``): names to mappings."""
    if v is None or (isinstance(v, Mapping) and all(isinstance(x, Mapping) for x in v.values())):
        return None
    return "a group of named _target_ specs (or null for none)"
