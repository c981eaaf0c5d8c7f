"""``edgekit.load``: open any supported model file or bundle as a :class:`Session`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import runtimes
from .errors import InputError
from .formats import detect_format
from .session import Session


def load(path: str | Path, backend: str = "auto", **options: Any) -> Session:
    """Load ``path`` (.onnx, .tflite, .mlpackage, TVM .so/.json, or a bundle folder).

    ``backend="auto"`` picks the first usable backend for the format; options go to the backend
    (``threads``, ``providers`` ...) or, for bundles, to the bundle loader (``variant``, ``budget_ms``).
    """
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "bundle":
        from .bundle import load_bundle

        return load_bundle(p, backend=backend, **options)
    if backend == "auto":
        chosen = runtimes.for_format(fmt)
    else:
        chosen = runtimes.get(backend)
        if fmt not in chosen.formats:
            raise InputError(f"backend {backend!r} cannot run {fmt} models (it runs: {', '.join(chosen.formats)})")
        why = chosen.unavailable_reason()
        if why is not None:
            from .errors import BackendUnavailable

            raise BackendUnavailable(f"backend {backend!r} is not usable here: {why}")
    runner = chosen.open(p, **options)
    return Session(runner, path=p, fmt=fmt)


def backends() -> list[dict]:
    """Every backend with whether it is usable here, its version, formats, and why not."""
    rows = []
    for b in runtimes.all_backends():
        why = b.unavailable_reason()
        rows.append({
            "name": b.name,
            "formats": list(b.formats),
            "available": why is None,
            "version": b.version() if why is None else None,
            "reason": why,
            "extra": b.extra,
        })
    return rows
