"""Canonicalize an ONNX model: load, check, upgrade the opset, simplify (onnxslim), infer shapes, name nodes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from edgekit.errors import ConversionError, ModelLoadError
from edgekit.specs import TensorSpec

log = logging.getLogger(__name__)

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.BOOL: np.bool_,
}


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file; a missing, corrupt or non-ONNX file is a ModelLoadError naming the path."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such ONNX file")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf DecodeError and friends: the one bad-file message of every command
        from edgekit.loader import unreadable_error

        raise unreadable_error(p, "onnx", exc) from None
    if not model.graph.node:
        raise ModelLoadError(f"{p}: the ONNX graph has no nodes (not an ONNX model?)")
    return model


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name (quantizers and the accuracy retry refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)
    return model


def canonicalize(model: onnx.ModelProto, opset: int | None = None, simplify: bool = True) -> onnx.ModelProto:
    """Checked, opset-upgraded, simplified and shape-inferred copy of ``model`` with named nodes."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"the source model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    current = opset_of(model)
    if opset is not None and opset != current:
        if opset < current:
            raise ConversionError(f"cannot lower the opset from {current} to {opset}; export the source at "
                                  f"opset {opset} instead")
        try:
            model = onnx.version_converter.convert_version(model, opset)
        except Exception as exc:
            raise ConversionError(f"opset upgrade {current} -> {opset} failed: {exc}") from None
    if simplify:
        model = _slim(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference is an aid, not a requirement
        log.warning("shape inference failed: %s", exc)
    model = name_nodes(model)
    onnx.checker.check_model(model)
    return model


def _slim(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:
        log.info("onnxslim not installed: skipping the simplifier (pip install 'edgekit-sdk[convert]')")
        return model
    try:
        slim = onnxslim.slim(model)
    except Exception as exc:  # keep the unsimplified (valid) model rather than failing the conversion
        log.warning("onnxslim failed (%s); keeping the model unsimplified", exc)
        return model
    if slim is None or not slim.graph.node:
        return model
    # keep the source's input/output names and order (the bundle maps runtime tensors by position)
    if [i.name for i in slim.graph.input] != [i.name for i in _real_inputs(model)] or \
            [o.name for o in slim.graph.output] != [o.name for o in model.graph.output]:
        log.warning("onnxslim changed the model's inputs/outputs; keeping the model unsimplified")
        return model
    return slim


def _real_inputs(model: onnx.ModelProto) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _spec(vi) -> TensorSpec:
    tt = vi.type.tensor_type
    dtype = _ONNX_DTYPES.get(tt.elem_type)
    if dtype is None:
        raise ConversionError(f"tensor {vi.name!r} has unsupported element type {tt.elem_type}")
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return TensorSpec(vi.name, tuple(dims), np.dtype(dtype))


def io_specs(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's graph inputs (initializers excluded) and outputs as TensorSpecs, in order."""
    return [_spec(i) for i in _real_inputs(model)], [_spec(o) for o in model.graph.output]
