"""Core ML backend: runs ``.mlpackage`` / ``.mlmodel`` through coremltools ``predict`` (macOS only).

A package written by edgekit's Core ML exporter records how its features relate to the source model
(user-defined metadata ``com.edgekit.io``: ONNX name -> Core ML name, and the dtypes Core ML narrowed, e.g.
int64 token ids -> int32). :func:`io_mapping` turns that into the source-facing specs a Session shows, and
converts feeds and outputs across it; it is pure (spec in, arrays out) and works on any OS. On other systems
than macOS the backend reports itself unavailable with the reason; ``inspect`` still reads the spec.
"""

from __future__ import annotations

import importlib.util
import platform
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


def feature_specs(features) -> list[TensorSpec]:
    """The specs of Core ML feature descriptions (``spec.description.input`` / ``.output``), Core ML names."""
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


def _narrowing(rule: str) -> tuple[np.dtype, np.dtype]:
    """``"int64->int32"`` -> (source dtype, Core ML dtype)."""
    src, _, dst = str(rule).partition("->")
    try:
        return np.dtype(src), np.dtype(dst)
    except TypeError:
        raise ModelLoadError(f"Core ML package metadata: unreadable dtype rule {rule!r} (expected e.g. "
                             "'int64->int32')") from None


@dataclass(frozen=True)
class CoreMLIO:
    """A package's Core ML features seen as the source model's tensors: names and dtypes both ways."""

    inputs: list[TensorSpec]            # what a Session shows: source names and dtypes
    outputs: list[TensorSpec]
    feature_inputs: list[TensorSpec]    # what Core ML takes and gives, same order
    feature_outputs: list[TensorSpec]

    def to_features(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds by source name -> Core ML feeds (renamed; narrowed dtypes cast, integers range-checked)."""
        names = [s.name for s in self.inputs]
        unknown = sorted(set(feeds) - set(names))
        missing = [n for n in names if n not in feeds]
        if unknown or missing:
            raise InputError(f"Core ML model takes inputs {names}; " + (f"missing {missing}" if missing else "")
                             + ("; " if missing and unknown else "") + (f"unknown {unknown}" if unknown else ""))
        out = {}
        for src, feat in zip(self.inputs, self.feature_inputs):
            value = np.asarray(feeds[src.name])
            if value.dtype != feat.dtype and feat.dtype.kind in "iu" and value.dtype.kind in "iu" and value.size:
                info = np.iinfo(feat.dtype)
                lo, hi = value.min(), value.max()
                if lo < info.min or hi > info.max:
                    raise InputError(f"input {src.name!r}: values {lo}..{hi} do not fit {feat.dtype.name}, the "
                                     f"dtype Core ML takes ({info.min}..{info.max})")
            out[feat.name] = value.astype(feat.dtype, copy=False)
        return out

    def from_features(self, results: Mapping[str, Any], output_names: Sequence[str] | None = None
                      ) -> dict[str, np.ndarray]:
        """Core ML results -> outputs by source name, in the source dtypes (``output_names``: a subset)."""
        want = set(output_names) if output_names else None
        out = {}
        for src, feat in zip(self.outputs, self.feature_outputs):
            if want is not None and src.name not in want:
                continue
            if feat.name not in results:
                raise RunError(f"Core ML gave no output {feat.name!r} (source name {src.name!r}); it gave "
                               f"{sorted(results)}")
            out[src.name] = np.asarray(results[feat.name]).astype(src.dtype, copy=False)
        return out


def io_mapping(spec) -> CoreMLIO:
    """The :class:`CoreMLIO` of a Core ML spec, from the metadata edgekit's exporter records (identity without)."""
    from edgekit.converters.mil_eval import io_metadata

    try:
        meta = io_metadata(spec)
    except ValueError as exc:
        raise ModelLoadError(f"Core ML package metadata is not valid JSON: {exc}") from None
    feat_in, feat_out = feature_specs(spec.description.input), feature_specs(spec.description.output)

    def side(features: list[TensorSpec], names: Mapping, narrowed: Mapping) -> list[TensorSpec]:
        source_of = {coreml: src for src, coreml in (names or {}).items()}
        specs = []
        for f in features:
            name = source_of.get(f.name, f.name)
            dtype = f.dtype
            if name in (narrowed or {}):
                src_dt, coreml_dt = _narrowing(narrowed[name])
                if coreml_dt != f.dtype:
                    raise ModelLoadError(f"Core ML package metadata says {name!r} was narrowed to "
                                         f"{coreml_dt.name}, but the feature {f.name!r} is {f.dtype.name}")
                dtype = src_dt
            specs.append(TensorSpec(name, f.shape, dtype))
        return specs

    return CoreMLIO(side(feat_in, meta.get("inputs"), meta.get("narrowed_inputs")),
                    side(feat_out, meta.get("outputs"), meta.get("narrowed_outputs")), feat_in, feat_out)


def load_spec(path: Path):
    """The protobuf spec of a saved Core ML model (works on Linux)."""
    import coremltools as ct

    try:
        return ct.utils.load_spec(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read Core ML model: {str(exc).splitlines()[0]}") from None


class CoreMLRunner(Runner):
    """Runs a loaded ``MLModel``; feeds and outputs use the source model's names and dtypes (:func:`io_mapping`)."""

    backend = "coreml"

    def __init__(self, model, spec):
        self._model = model
        self._io = io_mapping(spec)
        self.inputs = self._io.inputs
        self.outputs = self._io.outputs

    def run(self, feeds, output_names):
        ins = self._io.to_features(feeds)
        try:
            res = self._model.predict(ins)
        except Exception as exc:
            raise RunError(f"Core ML failed: {exc}") from exc
        return self._io.from_features(res, output_names)


@register
class CoreMLBackend(Backend):
    name = "coreml"
    formats = ("coreml",)
    extra = "coreml"
    description = "Core ML via coremltools (prediction needs macOS)"

    def _probe(self) -> str | None:
        if importlib.util.find_spec("coremltools") is None:
            return "coremltools is not installed; install it with: pip install 'edgekit-sdk[coreml]'"
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
        io = io_mapping(spec)
        info["inputs"] = [s.to_json() for s in io.inputs]      # as a Session shows them (source names/dtypes)
        info["outputs"] = [s.to_json() for s in io.outputs]
        if io.inputs != io.feature_inputs or io.outputs != io.feature_outputs:
            info["features"] = {"inputs": [s.to_json() for s in io.feature_inputs],
                                "outputs": [s.to_json() for s in io.feature_outputs]}
        return info
