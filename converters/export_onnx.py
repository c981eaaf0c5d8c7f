"""The ONNX exporter: the canonical ONNX at fp32, fp16, dynamic int8 or static int8 (QDQ) via quantize.py."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx

from edgekit._fs import atomic_file
from edgekit.errors import InputError

from . import register_exporter
from .canonical import io_specs
from .quantize import quantize


@register_exporter
class OnnxExporter:
    #: ONNX variants keep the source's dynamic dims
    static_shapes = False
    #: int8-dynamic rounds its weights by GPTQ when given calibration data
    dynamic_uses_calibration = True
    format = "onnx"
    extra = "convert"
    suffix = ".onnx"

    def unavailable_reason(self) -> str | None:
        return None     # onnx and onnxruntime are core dependencies

    def export(self, onnx_path: Path, out_path: Path, precision: str, calibration: dict | None = None,
               keep_float: Iterable[str] = (), calibration_method: str = "minmax", progress: bool = False,
               force: bool = False, **options: Any) -> Path:
        """Write the ``precision`` variant of ``onnx_path`` atomically; ``keep_float`` nodes stay in float."""
        if options:
            raise InputError(f"unknown option(s) for the ONNX exporter: {', '.join(sorted(options))}")
        inputs, _ = io_specs(onnx.load(str(onnx_path), load_external_data=False))
        with atomic_file(out_path, force=force) as tmp:
            quantize(Path(onnx_path), tmp, precision, calibration, inputs, keep_float,
                     method=calibration_method, progress=progress)
        return Path(out_path)
