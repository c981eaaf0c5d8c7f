"""Core ML backend: runs ``.mlpackage`` / ``.mlmodel`` through coremltools ``predict`` (macOS only).

On other systems the backend reports itself unavailable with the reason; ``inspect`` still reads the spec.
"""

from __future__ import annotations

import importlib.util
import platform
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BackendUnavailable, InputError, ModelLoadError, RunError
from edgekit.specs import TensorSpec

from . import register
from .base import Backend, Runner

#: Core ML MultiArray data types -> numpy
_ML_DTYPES = {65568: np.float32, 65552: np.float16, 65600: np.float64, 131104: np.int32, 131080: np.int8}
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


def _specs(features) -> list[TensorSpec]:
    out = []
    for f in features:
        arr = f.type.multiArrayType
        dtype = _ML_DTYPES.get(arr.dataType, np.float32)
        shape = tuple(int(d) for d in arr.shape)
        if arr.WhichOneof("ShapeFlexibility") == "shapeRange":
            shape = tuple(
                int(r.lowerBound) if r.lowerBound == r.upperBound else None for r in arr.shapeRange.sizeRanges
            )
        out.append(TensorSpec(f.name, shape, np.dtype(dtype)))
    return out


def load_spec(path: Path):
    """The protobuf spec of a saved Core ML model (works on Linux)."""
    import coremltools as ct

    try:
        return ct.utils.load_spec(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read Core ML model: {str(exc).splitlines()[0]}") from None


class CoreMLRunner(Runner):
    backend = "coreml"

    def __init__(self, model, spec):
        self._model = model
        self.inputs = _specs(spec.description.input)
        self.outputs = _specs(spec.description.output)

    def run(self, feeds, output_names):
        try:
            res = self._model.predict(feeds)
        except Exception as exc:
            raise RunError(f"Core ML failed: {exc}") from exc
        names = output_names or [s.name for s in self.outputs]
        return {n: np.asarray(res[n]) for n in names}


@register
class CoreMLBackend(Backend):
    name = "coreml"
    formats = ("coreml",)
    extra = "coreml"
    description = "Core ML via coremltools (prediction needs macOS)"

    def _probe(self) -> str | None:
        if importlib.util.find_spec("coremltools") is None:
            return "coremltools is not installed; install it with: pip install 'edgekit[coreml]'"
        if platform.system() != "Darwin":
            return f"Core ML prediction needs macOS (this is {platform.system()}); packages can still be built"
        return None

    def version(self) -> str | None:
        import coremltools as ct

        return ct.__version__

    def open(self, path: Path, compute_units: str = "ALL", threads: int | None = None, **options: Any) -> Runner:
        """``threads`` is accepted like every backend's, and ignored: Core ML schedules its own work."""
        if options:
            raise InputError(f"unknown option(s) for coreml: {', '.join(sorted(options))}")
        why = self.unavailable_reason()
        if why:
            raise BackendUnavailable(why)
        import coremltools as ct

        if compute_units not in COMPUTE_UNITS:
            raise InputError(f"compute_units must be one of {', '.join(COMPUTE_UNITS)}, got {compute_units!r}")
        spec = load_spec(path)
        try:
            model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot load Core ML model: {exc}") from None
        return CoreMLRunner(model, spec)

    def inspect(self, path: Path) -> dict:
        spec = load_spec(path)
        info: dict = {"spec_version": spec.specificationVersion, "model_type": spec.WhichOneof("Type")}
        if spec.WhichOneof("Type") == "mlProgram":
            ops: Counter = Counter()
            for fn in spec.mlProgram.functions.values():
                for block in fn.block_specializations.values():
                    for op in block.operations:
                        ops[op.type] += 1
            info["ops"] = dict(ops.most_common())
            info["nodes"] = sum(ops.values())
        info["inputs"] = [s.to_json() for s in _specs(spec.description.input)]
        info["outputs"] = [s.to_json() for s in _specs(spec.description.output)]
        return info
