"""ONNX Runtime backend: runs ``.onnx`` files (threads, execution providers, optimization level)."""

from __future__ import annotations

import importlib.util
import mmap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError, ModelLoadError, RunError
from edgekit.specs import TensorSpec

from . import register
from .base import Backend, Runner
from .ort_io import extra_dtype, from_ortvalue, is_extra, to_ortvalue

#: ONNX Runtime element type names -> numpy dtypes (ml_dtypes ones: ort_io.EXTRA_TYPES)
_ORT_DTYPES = {
    "float": np.float32, "float16": np.float16, "double": np.float64,
    "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16, "int32": np.int32,
    "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64, "bool": np.bool_,
    "string": np.object_,  # ONNX Runtime takes str and object arrays
}
#: type wrappers ONNX Runtime writes -> TensorSpec.kind
_KINDS = (("optional(seq(tensor(", "optional_sequence"), ("optional(tensor(", "optional"),
          ("seq(tensor(", "sequence"), ("tensor(", "tensor"))


#: how a NodeProto's ``op_type`` of these ops is serialized (field 4, length-delimited): found in the file's bytes
#: without parsing (and holding) the whole model
_QUANTIZE = b"\x22\x0eQuantizeLinear"
_DEQUANTIZE = b"\x22\x10DequantizeLinear"


def weight_only_qdq(path: Path) -> bool:
    """True for a model with DequantizeLinear nodes and no QuantizeLinear: int8 weights dequantized in front of
    float ops (edgekit's int8-dynamic Conv weights), no quantized activations.

    ONNX Runtime keeps such a DequantizeLinear at run time (it waits for QDQ node units to fuse), so a Conv gets its
    weights only per call and loses its prepacked kernels: EfficientNet-Lite0 ran 12.5 ms instead of 4.0 ms. With
    QDQ handling off, the DequantizeLinear of a constant is folded when the session loads (4.0 ms, same outputs).
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(_DEQUANTIZE) >= 0 and data.find(_QUANTIZE) < 0
    except (OSError, ValueError):   # unreadable or empty: InferenceSession gives the error
        return False


def _spec(arg) -> TensorSpec:
    prefix, kind = next(((p, k) for p, k in _KINDS if arg.type.startswith(p)), ("", ""))
    elem = arg.type[len(prefix):].rstrip(")")
    dtype = _ORT_DTYPES.get(elem)
    dtype = np.dtype(dtype) if dtype is not None else extra_dtype(elem)
    if not kind or dtype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape) if kind == "tensor" else ()
    return TensorSpec(arg.name, shape, dtype, kind)


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, sess):
        self._sess = sess
        self.inputs = [_spec(a) for a in sess.get_inputs()]
        self.outputs = [_spec(a) for a in sess.get_outputs()]
        self._all_outputs = [s.name for s in self.outputs]
        self._extra_out = {s.name: s.dtype for s in self.outputs if is_extra(s.dtype)}
        self.providers = sess.get_providers()

    def run(self, feeds, output_names):
        names = output_names or self._all_outputs
        try:
            feeds = {k: to_ortvalue(v) if isinstance(v, np.ndarray) and is_extra(v.dtype) else v
                     for k, v in feeds.items() if v is not None}  # an empty optional input is left out
            if any(n in self._extra_out for n in names):
                return self._run_ortvalues(feeds, names)
            values = self._sess.run(names, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RunError(f"onnxruntime failed: {exc}") from exc
        return dict(zip(names, values))

    def _run_ortvalues(self, feeds: dict, names: list[str]) -> dict:
        """A run returning OrtValues: outputs of the types numpy lacks are read from their bytes."""
        import onnxruntime as ort

        ins = {k: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
               for k, v in feeds.items()}
        outs = self._sess.run_with_ort_values(names, ins)
        res = {}
        for name, ov in zip(names, outs):
            if not ov.is_tensor():
                raise RunError(f"output {name!r} is not a tensor: request it apart from the outputs of types "
                               f"numpy lacks ({', '.join(self._extra_out)})")
            res[name] = from_ortvalue(ov, self._extra_out[name]) if name in self._extra_out else ov.numpy()
        return res

    def close(self) -> None:
        self._sess = None


@register
class OrtBackend(Backend):
    name = "onnxruntime"
    formats = ("onnx",)
    extra = ""
    description = "ONNX Runtime (CPU; other execution providers when installed)"

    def _probe(self) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def version(self) -> str | None:
        import onnxruntime as ort

        return ort.__version__

    def open(self, path: Path, threads: int | None = None, providers: list[str] | None = None,
             optimization: str = "all", **options: Any) -> Runner:
        import onnxruntime as ort

        if options:
            raise InputError(f"unknown option(s) for onnxruntime: {', '.join(sorted(options))}")
        so = ort.SessionOptions()
        # idle intra-op threads sleep instead of spinning after each run: a spinning pool slows whatever runs next
        # (another variant, another runtime) on a small CPU (measured: benchmarks/profile_vs_standalone.py)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if weight_only_qdq(Path(path)):
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        levels = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization not in levels:
            raise InputError(f"optimization must be one of {', '.join(levels)}, got {optimization!r}")
        so.graph_optimization_level = levels[optimization]
        so.log_severity_level = 4  # failures surface as exceptions, not log lines
        available = ort.get_available_providers()
        if providers:
            missing = [p for p in providers if p not in available]
            if missing:
                raise InputError(f"execution provider(s) {missing} not available; available: {available}")
        else:
            providers = ["CPUExecutionProvider"]
        try:
            sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{path}: cannot load ONNX model: {msg}") from None
        return OrtRunner(sess)

    def inspect(self, path: Path) -> dict:
        return inspect_onnx(path)


def inspect_onnx(path: Path) -> dict:
    """Op histogram, parameter count and opset of an ONNX file."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot parse ONNX model: {exc}") from None
    g = model.graph
    ops = Counter(n.op_type for n in g.node)
    params = sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in g.initializer)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {
        "ops": dict(ops.most_common()),
        "nodes": len(g.node),
        "parameters": params,
        "opset": opsets.get("ai.onnx"),
        "opsets": opsets,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": model.ir_version,
    }
