"""Recognise a model's format from its path and first bytes."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelLoadError

FORMATS = ("onnx", "tflite", "coreml", "tvm", "bundle", "composite")


def tvm_sidecar(path: Path) -> Path:
    """The JSON signature file that goes with a TVM-compiled ``.so`` (same stem, ``.json``)."""
    return path.with_suffix(".json")


def detect_format(path: str | Path) -> str:
    """One of :data:`FORMATS`, or :class:`ModelLoadError` naming the path and why."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file or directory")
    if p.is_dir():
        if (p / "manifest.json").is_file():
            return "bundle"
        if (p / "plan.json").is_file():
            return "composite"
        if p.suffix == ".mlpackage" or (p / "Manifest.json").is_file():
            return "coreml"
        raise ModelLoadError(f"{p}: a directory that is neither an edgekit bundle nor an .mlpackage")
    suffix = p.suffix.lower()
    if suffix == ".mlmodel":
        return "coreml"
    if suffix in (".so", ".dylib", ".dll"):
        return "tvm"
    if suffix == ".json":
        try:
            meta = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{p}: not a readable JSON file ({exc})") from None
        if isinstance(meta, dict) and meta.get("format") == "edgekit-tvm":
            return "tvm"
        if isinstance(meta, dict) and meta.get("format") == "edgekit-composite":
            return "composite"
        raise ModelLoadError(f"{p}: a JSON file that is not an edgekit TVM module signature")
    with open(p, "rb") as f:
        head = f.read(8)
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if suffix == ".tflite":
        raise ModelLoadError(f"{p}: not a TFLite flatbuffer (no TFL3 identifier)")
    if suffix == ".onnx":
        return "onnx"
    raise ModelLoadError(
        f"{p}: unknown model format (expected .onnx, .tflite, .mlpackage, a TVM .so/.json or a bundle folder)"
    )
