"""edgekit.converters: canonicalize, quantize, prune, export (ONNX, TFLite, Core ML, TVM) and validate.

Export formats register here, one module each (``export_<format>.py``) with ``@register_exporter``;
adding a format is one module plus its name in ``_EXPORTERS``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from edgekit.errors import InputError

#: exporter modules; each registers one export format
_EXPORTERS = ("export_onnx", "export_tflite", "export_coreml")

_REGISTRY: dict[str, Exporter] = {}
_loaded = False


class Exporter(Protocol):
    """Turns a canonical (possibly quantized/pruned) ONNX variant into one target format."""

    format: str          # "onnx", "tflite", "coreml"
    extra: str           # the edgekit extra its converter needs
    suffix: str          # artifact suffix, e.g. ".tflite"

    def unavailable_reason(self) -> str | None:
        """None when this exporter can run here, else why (naming the pip install)."""

    def export(self, onnx_path: Path, out_path: Path, precision: str, calibration: dict | None = None,
               **options: Any) -> Path:
        """Write ``out_path`` (a file or .mlpackage folder) and return it; raise ConversionError on failure."""


def register_exporter(cls):
    _REGISTRY[cls.format] = cls()
    return cls


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for mod in _EXPORTERS:
            try:
                importlib.import_module(f"{__name__}.{mod}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{mod}":
                    raise
        _loaded = True


def exporters() -> dict[str, Exporter]:
    _load_all()
    return dict(_REGISTRY)


def get_exporter(fmt: str) -> Exporter:
    _load_all()
    try:
        return _REGISTRY[fmt]
    except KeyError:
        raise InputError(f"unknown export format {fmt!r}; known formats: {', '.join(_REGISTRY)}") from None
