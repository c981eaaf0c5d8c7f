"""``edgekit.load``: open any supported model file or bundle as a :class:`Session`; the one message for a bad file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import runtimes
from .errors import EdgekitError, InputError, ModelLoadError
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
    try:
        runner = chosen.open(p, **options)
    except ModelLoadError as exc:
        raise unreadable_error(p, fmt, exc) from None
    return Session(runner, path=p, fmt=fmt)


_FORMAT_NAMES = {"onnx": "ONNX", "tflite": "TFLite"}


def unreadable_error(path: str | Path, fmt: str, exc: BaseException | None = None) -> EdgekitError:
    """The error to raise when reading ``path`` as ``fmt`` failed with ``exc``.

    A file that is not a well-formed model of its format (corrupt, truncated, another format) gets the one message
    every command shows: "cannot read PATH: not a valid ONNX file (truncated or corrupt)". Otherwise ``exc`` itself
    when it is an :class:`EdgekitError`, else a :class:`ModelLoadError` with its first line.
    """
    broken_flatbuffer = fmt == "tflite" and "not a valid flatbuffer" in str(exc or "").lower()
    if fmt in _FORMAT_NAMES and (broken_flatbuffer or not _well_formed(Path(path), fmt)):
        return ModelLoadError(f"cannot read {path}: not a valid {_FORMAT_NAMES[fmt]} file (truncated or corrupt)")
    if isinstance(exc, EdgekitError):
        return exc
    text = str(exc or "").strip()
    detail = text.splitlines()[0] if text else type(exc).__name__
    return ModelLoadError(f"cannot read {path}: cannot load {_FORMAT_NAMES.get(fmt, fmt)} model: {detail}")


def _well_formed(path: Path, fmt: str) -> bool:
    """Whether ``path`` parses as a complete ``fmt`` container (ONNX protobuf with a graph, TFLite flatbuffer)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    try:
        if fmt == "onnx":
            import onnx

            model = onnx.load_model_from_string(data)
            return model.ir_version > 0 and len(model.graph.node) > 0
        from ai_edge_litert import schema_py_generated as schema

        model = schema.ModelT.InitFromPackedBuf(data, 0)
        return data[4:8] == b"TFL3" and bool(model.subgraphs) and model.buffers is not None
    except ImportError:  # no schema to check TFLite with: trust the runtime's own error
        return True
    except Exception:  # protobuf DecodeError, flatbuffer offsets out of range, ...
        return False


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
