"""edgekit: take a trained model to edge hardware and run it under a latency budget.

Public API: :func:`load`, :func:`convert`, :class:`Session`, :class:`Bundle`, :func:`backends` and the
errors. Heavy libraries (TVM, coremltools, torch, TensorFlow) are imported only when a call needs them.
"""

from __future__ import annotations

from typing import Any

from .bundle import Bundle, Variant
from .errors import (
    BackendUnavailable,
    BoardError,
    ConversionError,
    DeadlineError,
    EdgekitError,
    InputError,
    MissingExtraError,
    ModelLoadError,
    OutputExistsError,
    RunError,
    UnsupportedOpError,
    ValidationError,
)
from .loader import backends, load
from .session import Session
from .specs import TensorSpec

__version__ = "0.1.0"

__all__ = [
    "__version__", "load", "convert", "backends", "Session", "Bundle", "Variant", "TensorSpec",
    "EdgekitError", "InputError", "ModelLoadError", "BackendUnavailable", "MissingExtraError",
    "RunError", "ConversionError", "UnsupportedOpError", "ValidationError", "OutputExistsError", "DeadlineError",
    "BoardError",
]


def convert(source: Any, out_dir: Any, **kwargs: Any) -> Bundle:
    """Convert ``source`` (ONNX path or torch module) into a validated bundle; see edgekit.converters."""
    from .converters.pipeline import convert as _convert

    return _convert(source, out_dir, **kwargs)
