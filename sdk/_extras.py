"""Lazy imports of optional dependencies, with an error naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

#: which extra of edgekit provides each optional top-level module
EXTRA_OF = {
    "ai_edge_litert": "tflite",
    "tflite_runtime": "tflite",
    "coremltools": "coreml",
    "tvm": "tvm",
    "torch": "torch",
    "onnxslim": "convert",
    "tokenizers": "apps",
    "sklearn": "apps",
    "skimage": "apps",
    "matplotlib": "plot",
}


def install_hint(extra: str) -> str:
    return f"pip install 'edgekit-sdk[{extra}]'"


def require(module: str, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'edgekit-sdk[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = extra or EXTRA_OF.get(top, "all")
        what = f" for {purpose}" if purpose else ""
        raise MissingExtraError(
            f"{top} is needed{what} but is not installed ({exc}); install it with: {install_hint(extra)}"
        ) from None
