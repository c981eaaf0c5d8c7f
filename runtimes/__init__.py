"""The backend registry: one module per runtime, each registering itself with ``@register``.

Adding a backend is one new module in this folder plus its name in ``_MODULES``.
Backend modules import their runtime library lazily, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib

from edgekit.errors import BackendUnavailable, InputError

from .base import Backend, Runner

__all__ = ["Backend", "Runner", "register", "get", "all_backends", "for_format"]

#: backend modules, in order of preference for a format they share
_MODULES = ("ort", "litert", "coreml", "tvm", "composite")

_REGISTRY: dict[str, Backend] = {}
_loaded = False


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: add one instance of a backend class to the registry."""
    _REGISTRY[cls.name] = cls()
    return cls


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for mod in _MODULES:
            importlib.import_module(f"{__name__}.{mod}")
        _loaded = True


def all_backends() -> list[Backend]:
    """Every registered backend, usable here or not."""
    _load_all()
    return list(_REGISTRY.values())


def get(name: str) -> Backend:
    """The backend called ``name``; an unknown name is an :class:`InputError` listing the known ones."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; known backends: {', '.join(_REGISTRY)}") from None


def for_format(fmt: str) -> Backend:
    """The first usable backend that runs format ``fmt``, or :class:`BackendUnavailable` saying why."""
    reasons = []
    for backend in all_backends():
        if fmt in backend.formats:
            why = backend.unavailable_reason()
            if why is None:
                return backend
            reasons.append(f"{backend.name}: {why}")
    if not reasons:
        raise BackendUnavailable(f"no backend runs {fmt!r} models")
    raise BackendUnavailable(f"no usable backend for {fmt!r} models here ({'; '.join(reasons)})")
