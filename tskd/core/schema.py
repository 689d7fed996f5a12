"""The vocabulary of the config schemas: checked fields, resume rules, one walk that checks all.

A schema is a dataclass (a :class:`Schema`) whose fields have no default: the value and
its comment live once, in the YAML. What a value must be lives in the field's metadata
(:func:`setting`): a check returning ``None`` or what the value must be, whether a resumed run
may change it (:data:`MUST_MATCH`, :data:`MAY_DIFFER`, :data:`MATCH_IF_SPLIT`) and a hint for
the keys people get wrong. :func:`check_tree` walks a plain config tree against a schema and
returns every problem at once (missing key, wrong value, a key no schema knows, with the
closest known one); :func:`build` then turns the tree into the typed objects. The checks
themselves are in :mod:`tskd.core.checks`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from tskd.core.errors import ConfigError

MUST_MATCH = "must match"  # a resumed run continues the same optimisation: the same value
MAY_DIFFER = "may differ"  # how the run is executed, tested or stored, not what it learns
MATCH_IF_SPLIT = "must match when the trial selects the training split"  # RegDB's dataset.trial
ABSENT = object()  # a key the tree does not have


@dataclasses.dataclass(frozen=True)
class Unresolved:
    """A value whose interpolation failed (kept so every other key is still checked)."""

    raw: Any
    error: str


def setting(check, *, resume: str, fix: str = "") -> Any:
    """A leaf field: its ``check``, its resume rule and an optional hint added to the message."""
    return dataclasses.field(metadata={"check": check, "resume": resume, "fix": fix})


def group(*, resume: str | None = None) -> Any:
    """A nested schema (or ``None`` where its type says so); ``resume`` covers the whole node
    where one side is not a group of keys (e.g. ``dataset.synthetic`` null vs set)."""
    return dataclasses.field(metadata={"resume": resume})


class Schema:
    """Base of the schema dataclasses."""

    WHAT: ClassVar[str] = ""  # "invalid <WHAT> config" in the error (else the node's key)
    # the keys (relative to the node) :meth:`problems` reads: it runs once they passed, even
    # when other keys did not (empty: once every key of the node passed)
    DEPENDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def extra_key(cls, name: str, value: Any) -> str | None:
        """A warning when an unknown key ``name`` is accepted as given; None refuses it."""
        return None

    def problems(self, key: str) -> list[str]:
        """Checks across keys, run once every leaf of the node passed (``key``: its path)."""
        return []

    @classmethod
    def of(cls, tree: Mapping, key: str = ""):
        """The typed object of a plain ``tree``, or :class:`ConfigError` listing every problem."""
        problems, _ = check_tree(cls, tree, key)
        if problems:
            what = cls.WHAT or key or cls.__name__
            raise ConfigError(f"invalid {what} config, nothing was run: " + "; ".join(problems)
                              + ".")
        return build(cls, tree)


def _hints(schema: type) -> dict[str, Any]:
    """The type of each field (class-level settings such as ``WHAT`` are no keys)."""
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def nested(hint: Any) -> tuple[type | None, bool]:
    """``(schema, optional)`` when ``hint`` is a schema dataclass or ``<schema> | None``."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else None
    if isinstance(hint, type) and issubclass(hint, Schema):
        return hint, optional
    return None, optional


def join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def plain_tree(node: Any, key: str = "") -> Any:
    """``node`` as plain values, each interpolation resolved on its own: a failure becomes an
    :class:`Unresolved` there instead of stopping the walk; a ``???`` value is left out."""
    if isinstance(node, DictConfig):
        out = {}
        for name in node.keys():
            if OmegaConf.is_missing(node, name):
                continue
            try:
                child = node[name]
            except Exception as e:  # noqa: BLE001 - any resolver error is reported, not raised
                raw = OmegaConf.to_container(node, resolve=False)[name]
                out[name] = Unresolved(raw, f"{type(e).__name__}: {e}".splitlines()[0])
                continue
            out[name] = plain_tree(child, join(key, str(name)))
        return out
    if isinstance(node, ListConfig):
        try:
            return OmegaConf.to_container(node, resolve=True)
        except Exception as e:  # noqa: BLE001
            return Unresolved(OmegaConf.to_container(node, resolve=False), str(e).splitlines()[0])
    return node


def leaf_keys(schema: type, key: str = "") -> Iterator[str]:
    """Every dotted leaf key of ``schema``."""
    for name, hint in _hints(schema).items():
        sub, _ = nested(hint)
        yield from leaf_keys(sub, join(key, name)) if sub else [join(key, name)]


def _unknown(key: str, name: str, value: Any, siblings: list[str], root: type) -> str:
    """A key no schema knows: named with its value, the closest known key and the fix."""
    full = join(key, name)
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    guess = join(key, close[0]) if close else None
    if guess is None:  # the same name in another group (``data.md_w`` for ``loss.md_w``)
        others = {k.rsplit(".", 1)[-1]: k for k in leaf_keys(root)}
        close = difflib.get_close_matches(name, list(others), n=1, cutoff=0.8)
        guess = others[close[0]] if close else None
    hint = (f"did you mean {guess}? (set {guess}=<value>, or drop {full})" if guess else
            f"drop it; the keys of {key or 'the top level'} are {', '.join(siblings)}")
    return f"{full}={value!r} is not a config key: {hint}"


def check_tree(schema: type, tree: Any, key: str = "", root: type | None = None
               ) -> tuple[list[str], list[str]]:
    """Every problem of ``tree`` against ``schema`` (and the warnings of accepted extra keys).

    Args:
        schema: A :class:`Schema` dataclass.
        tree: Plain values (see :func:`plain_tree`).
        key: The dotted path of ``tree`` in the whole config, for messages.
        root: The whole config's schema (closest-key suggestions across groups).
    """
    found, warnings = _walk(schema, tree, key, root or schema)
    return [message for _, message in found], warnings


def _walk(schema: type, tree: Any, key: str, root: type
          ) -> tuple[list[tuple[str, str]], list[str]]:
    """:func:`check_tree` with each problem's key, so a node's own check can tell whether
    the keys it reads passed."""
    found: list[tuple[str, str]] = []
    warnings: list[str] = []
    hints = _hints(schema)
    if not isinstance(tree, Mapping):
        return [(key, f"{key}={tree!r} must be a group of keys ({', '.join(hints)}) (set "
                      f"{key}.<key>=<value>)")], []
    for f in dataclasses.fields(schema):
        k, value = join(key, f.name), tree.get(f.name, ABSENT)
        sub, optional = nested(hints[f.name])
        if value is ABSENT:
            found.append((k, f"{k} is missing from the config (put it back in the YAML, or set "
                             f"it: {k}=...)"))
        elif isinstance(value, Unresolved):
            found.append((k, f"{k}={value.raw!r} cannot be resolved ({value.error}); fix the "
                             f"interpolation or set {k}=<value>"))
        elif sub is not None and not (optional and value is None):
            p, w = _walk(sub, value, k, root)
            found += p
            warnings += w
        elif sub is None:
            want = f.metadata["check"](value)
            if want is not None:
                fix = f"; {f.metadata['fix']}" if f.metadata.get("fix") else ""
                found.append((k, f"{k}={value!r} must be {want} (set {k}=<value>{fix})"))
    for name, value in tree.items():
        if name not in hints:
            accepted = schema.extra_key(str(name), value)
            if accepted is None:
                found.append((join(key, str(name)),
                              _unknown(key, str(name), value, list(hints), root)))
            else:
                warnings.append(accepted)
    reads = [join(key, d) for d in schema.DEPENDS] or [key]
    clean = not any(k == r or k.startswith(r + ".") or not r for k, _ in found for r in reads)
    if clean:
        try:
            typed = build(schema, tree)
        except (KeyError, TypeError):  # a key elsewhere in the node is missing
            typed = None
        if typed is not None:
            found += [(key, message) for message in typed.problems(key)]
    return found, warnings


def build(schema: type, tree: Mapping):
    """The typed object of a checked ``tree`` (lists of tuple fields become tuples; numbers stay
    as given, an int where a float is typed, as Python's numbers allow); keys the schema does
    not know are left out."""
    hints, values = _hints(schema), {}
    for f in dataclasses.fields(schema):
        value, hint = tree[f.name], hints[f.name]
        sub, _ = nested(hint)
        if sub is not None and value is not None:
            value = build(sub, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return schema(**values)


def to_plain(obj: Any) -> Any:
    """A schema object as plain dicts and lists (what a checkpoint may hold)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_plain(x) for x in obj]
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def differences(schema: type, then: Mapping, now: Mapping, key: str = "", *,
                split: bool = False) -> Iterator[tuple[str, Any, Any]]:
    """``(key, recorded, now)`` for every key the resume rule says must match and that differs.

    Keys the record lacks are not checked (older checkpoints record fewer); ``split``: the
    dataset's trial selects its training data, so :data:`MATCH_IF_SPLIT` keys must match too.
    """
    hints = _hints(schema)
    for f in dataclasses.fields(schema):
        k, was = join(key, f.name), then.get(f.name, ABSENT)
        if was is ABSENT:
            continue
        cur = now.get(f.name, ABSENT) if isinstance(now, Mapping) else ABSENT
        sub, _ = nested(hints[f.name])
        if sub is not None and isinstance(was, Mapping) and isinstance(cur, Mapping):
            yield from differences(sub, was, cur, k, split=split)
            continue
        rule = f.metadata.get("resume")
        if (rule == MUST_MATCH or (rule == MATCH_IF_SPLIT and split)) and was != cur:
            yield k, was, cur
