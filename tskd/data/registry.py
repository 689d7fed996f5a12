"""``dataset.name`` -> the dataset's :class:`~tskd.data.protocol.DatasetProtocol`.

Adding a dataset: write its module (lists, protocol, a ``PROTOCOL`` object), add one
:func:`register` line below and a ``configs/dataset/<name>.yaml``. Nothing else in the package
names a dataset. Code outside the package (a test, a user's script) can :func:`register` its
own before building a datamodule.
"""

from __future__ import annotations

from tskd.core.errors import DatasetError
from tskd.data import llcm, regdb, sysu
from tskd.data.protocol import DatasetProtocol

_REGISTRY: dict[str, DatasetProtocol] = {}


def register(protocol: DatasetProtocol, replace: bool = False) -> DatasetProtocol:
    """Make ``protocol`` the dataset called ``protocol.name``.

    Raises:
        DatasetError: The name is taken and ``replace`` is false (two modules, one name).
    """
    if protocol.name in _REGISTRY and not replace and _REGISTRY[protocol.name] is not protocol:
        raise DatasetError(f"a dataset named {protocol.name!r} is already registered; pick "
                           "another name (or pass replace=True)")
    _REGISTRY[protocol.name] = protocol
    return protocol


def unregister(name: str) -> None:
    """Forget dataset ``name`` (tests that register a toy one clean up with it)."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """The registered dataset names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> DatasetProtocol:
    """The protocol of dataset ``name``.

    Raises:
        DatasetError: No dataset of that name (the message lists the registered ones).
    """
    if name not in _REGISTRY:
        raise DatasetError(f"dataset.name={name!r} is not a protocol; use one of {names()}")
    return _REGISTRY[name]


register(sysu.PROTOCOL)
register(regdb.PROTOCOL)
register(llcm.PROTOCOL)
