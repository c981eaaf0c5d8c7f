"""The ONNX exporter: the canonical ONNX at fp32, fp16, dynamic int8 or static int8 (QDQ) via quantize.py."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx

from . import register_exporter
from .canonical import io_specs
from .quantize import quantize


@register_exporter
class OnnxExporter:
    format = "onnx"
    extra = "convert"
    suffix = ".onnx"

    def unavailable_reason(self) -> str | None:
        return None     # onnx and onnxruntime are core dependencies

    def export(self, onnx_path: Path, out_path: Path, precision: str, calibration: dict | None = None,
               keep_float: Iterable[str] = (), calibration_method: str = "minmax", progress: bool = False,
               **options: Any) -> Path:
        """Write the ``precision`` variant of ``onnx_path``; ``keep_float`` nodes stay in float."""
        inputs, _ = io_specs(onnx.load(str(onnx_path), load_external_data=False))
        return quantize(Path(onnx_path), Path(out_path), precision, calibration, inputs, keep_float,
                        method=calibration_method, progress=progress)
