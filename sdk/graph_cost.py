"""Static cost of an ONNX graph: floating-point and integer operations, and bytes moved, per inference.

Shapes come from ONNX shape inference with the graph inputs set to ``shapes`` (dynamic dims of inputs not given
set to 1, as ``edgekit run`` feeds do).
MatMul/Gemm/Conv count 2 ops per multiply-add; their integer forms (MatMulInteger, QLinearMatMul,
ConvInteger, QLinearConv) count as int8 ops; other nodes count one op per output element. Bytes are the
weights plus every activation written once and read once, plus graph inputs and outputs: a roofline's
memory side, not a cache simulation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import InputError, ModelLoadError

_INT8_MATMUL = {"MatMulInteger", "QLinearMatMul"}
_INT8_CONV = {"ConvInteger", "QLinearConv"}
_FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "Cast", "Transpose",
         "Gather", "Slice", "Concat", "Split", "Expand", "QuantizeLinear", "DequantizeLinear"}


def _dims(vi) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            return None
    return out


def _itemsize(elem_type: int) -> int:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 4


def _set_input_shapes(model, shapes: dict) -> None:
    """Graph inputs take ``shapes`` where given (rank must agree), other dynamic dims 1; stale value infos go."""
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        shape = shapes.get(vi.name)
        if shape is not None and len(shape) != len(dims):
            raise InputError(f"input {vi.name!r} has {len(dims)} dims, got shape {list(shape)}")
        for i, d in enumerate(dims):
            if shape is not None:
                d.dim_value = int(shape[i])
            elif not d.HasField("dim_value"):
                d.dim_value = 1
    if shapes:  # intermediate and output shapes were for other input shapes: infer them again
        del model.graph.value_info[:]
        for vi in model.graph.output:
            for d in vi.type.tensor_type.shape.dim:
                d.Clear()


def graph_cost(path: str | Path, shapes: Mapping[str, Sequence[int]] | None = None) -> dict:
    """``{"flops": .., "int8_ops": .., "bytes": .., "weight_bytes": .., "unknown_nodes": ..}`` for one model,
    with the graph inputs named in ``shapes`` at those shapes."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        from .loader import unreadable_error

        raise unreadable_error(path, "onnx", exc) from None
    _set_input_shapes(model, dict(shapes or {}))
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}: shape inference failed: {exc}") from None
    g = model.graph
    shapes: dict[str, list[int] | None] = {}
    sizes: dict[str, int] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        shapes[vi.name] = _dims(vi)
        sizes[vi.name] = _itemsize(vi.type.tensor_type.elem_type)
    weights = {}
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
        weights[t.name] = int(np.prod(t.dims)) * _itemsize(t.data_type) if len(t.dims) else _itemsize(t.data_type)
    flops = int8 = 0
    unknown = 0
    act_bytes = 0
    graph_io = {vi.name for vi in list(g.input) + list(g.output)}
    for node in g.node:
        outs = [shapes.get(o) for o in node.output]
        ins = [shapes.get(i) for i in node.input]
        op = node.op_type
        for o, s in zip(node.output, outs):
            if s is not None and o not in graph_io:
                act_bytes += 2 * int(np.prod(s)) * sizes.get(o, 4)
        if op in ("MatMul", "Gemm") or op in _INT8_MATMUL:
            a_idx, b_idx = (0, 3) if op == "QLinearMatMul" else (0, 1)
            a, b, y = (ins[a_idx] if len(ins) > a_idx else None), (ins[b_idx] if len(ins) > b_idx else None), outs[0]
            if a is None or b is None or y is None:
                unknown += 1
                continue
            k = a[-1]
            if op == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute):
                k = a[0]
            n_ops = 2 * int(np.prod(y)) * int(k)
            if op in _INT8_MATMUL:
                int8 += n_ops
            else:
                flops += n_ops
        elif op in ("Conv", "ConvTranspose") or op in _INT8_CONV:
            w_idx = 3 if op == "QLinearConv" else 1
            w, y = (ins[w_idx] if len(ins) > w_idx else None), outs[0]
            if w is None or y is None:
                unknown += 1
                continue
            if op == "ConvTranspose":  # each input element meets the whole kernel
                x = ins[0]
                n_ops = 2 * int(np.prod(x)) * int(np.prod(w[1:])) if x is not None else 0
            else:
                n_ops = 2 * int(np.prod(y)) * int(np.prod(w[1:]))
            if op in _INT8_CONV:
                int8 += n_ops
            else:
                flops += n_ops
        elif op not in _FREE:
            if outs and outs[0] is not None:
                flops += int(np.prod(outs[0]))
            else:
                unknown += 1
    io_bytes = sum(int(np.prod(shapes[n])) * sizes.get(n, 4) for n in graph_io if shapes.get(n) is not None)
    wbytes = sum(weights.values())
    return {"flops": int(flops), "int8_ops": int(int8), "bytes": int(wbytes + act_bytes + io_bytes),
            "weight_bytes": int(wbytes), "unknown_nodes": unknown}
