"""Compile an ONNX model (or subgraph) with TVM Relax into a shared library plus its JSON signature."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._extras import require
from edgekit.errors import ConversionError
from edgekit.specs import TensorSpec

SIGNATURE_FORMAT = "edgekit-tvm"


def _onnx_specs(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from onnx import helper

    init = {t.name for t in model.graph.initializer}

    def spec(vi) -> TensorSpec:
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        return TensorSpec(vi.name, shape, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)))

    ins = [spec(v) for v in model.graph.input if v.name not in init]
    outs = [spec(v) for v in model.graph.output]
    return ins, outs


def compile_onnx(model: Any, out_path: str | Path, target: Any = "llvm", shape_dict: dict | None = None,
                 cc: str | None = None) -> Path:
    """Compile ``model`` (path or ModelProto) for ``target``; writes ``out.so`` and ``out.json``.

    Dynamic input dims must be fixed through ``shape_dict`` ({input: shape}); default 1.
    """
    import onnx

    tvm = require("tvm", purpose="compiling TVM kernels")
    from tvm.relax.frontend.onnx import from_onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    ins, outs = _onnx_specs(model)
    shapes = {s.name: list((shape_dict or {}).get(s.name, s.concrete_shape())) for s in ins}
    try:
        mod = from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
        ex = tvm.compile(mod, target=tvm.target.Target(target))
    except Exception as exc:
        raise ConversionError(f"TVM could not compile the model: {str(exc).strip().splitlines()[-1]}") from None
    out = Path(out_path).with_suffix(".so")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.so")
    try:
        ex.export_library(str(tmp), **({"cc": cc} if cc else {}))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    fixed_ins = [TensorSpec(s.name, tuple(shapes[s.name]), s.dtype) for s in ins]
    params = sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer)
    meta = {
        "format": SIGNATURE_FORMAT,
        "version": 1,
        "library": out.name,
        "entry": "main",
        "target": target if isinstance(target, (str, dict)) else str(target),
        "inputs": [s.to_json() for s in fixed_ins],
        "outputs": [s.to_json() for s in outs],
        "source_ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "parameters": params,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return out
