"""Which ONNX ops each target runs, in one place: op tables (data) plus small constraint functions.

A target is a named :class:`OpTable`: the op types it can run (``supported``) plus constraint functions,
registered with ``@constraint(target, op, ...)``, that may refuse a node for its attributes, dtypes or ranks
by returning a reason string (``None`` = fine). ``"*"`` registers a check run on every node of that target.

Targets: ``"onnxruntime"`` (every standard op), ``"onnxruntime-reduced"`` (a configurable op list, as ORT's
mobile packages have: :func:`reduced_onnxruntime`), ``"tflite"`` (LiteRT builtins as the ONNX->TFLite
converters emit them) and ``"coreml"`` (the ONNX->MIL translator's table, ``converters/onnx_to_mil.py``).

    support = NodeSupport.for_model(model, "tflite")
    for node in model.graph.node:
        reason = support.reason(node)      # None when the target runs it
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError

#: a constraint: returns None when the node is fine, else a short reason
Constraint = Callable[["NodeInfo"], "str | None"]


@dataclass(frozen=True)
class TensorInfo:
    """What shape inference knows about one tensor: dtype (None if unknown), shape (None if unknown rank)."""

    name: str
    dtype: np.dtype | None
    shape: tuple | None
    constant: bool = False

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


@dataclass(frozen=True)
class NodeInfo:
    """One ONNX node with its attributes and typed inputs/outputs, as constraint functions see it."""

    op_type: str
    domain: str
    name: str
    attrs: dict[str, Any]
    inputs: tuple[TensorInfo | None, ...]
    outputs: tuple[TensorInfo | None, ...]
    opset: int

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def dtypes(self) -> set[np.dtype]:
        return {t.dtype for t in (*self.inputs, *self.outputs) if t is not None and t.dtype is not None}

    def max_rank(self) -> int:
        return max((t.rank for t in (*self.inputs, *self.outputs) if t is not None and t.rank is not None),
                   default=0)


@dataclass
class OpTable:
    """The ops one target runs: a set of op types (or ``None`` = every standard op) and constraints."""

    name: str
    supported: frozenset[str] | None
    description: str = ""
    domains: tuple[str, ...] = ("", "ai.onnx")
    constraints: dict[str, list[Constraint]] = field(default_factory=dict)
    #: a per-node override (e.g. the Core ML translator's own ``supports(node)``)
    node_check: Callable[[Any], bool] | None = None

    def reason(self, info: NodeInfo, node: Any = None) -> str | None:
        """None when this target runs ``info``, else why not."""
        if info.domain not in self.domains:
            return f"{self.name} has no ops of domain {info.domain!r}"
        if self.supported is not None and info.op_type not in self.supported:
            return f"{info.op_type} is not in the {self.name} op table"
        if self.supported is None:
            import onnx.defs

            if not onnx.defs.has(info.op_type, info.domain):
                return f"{info.op_type} is not a standard ONNX op"
        if self.node_check is not None and node is not None and not self.node_check(node):
            return f"{info.op_type} with these attributes/inputs is refused by the {self.name} translator"
        for fn in (*self.constraints.get("*", ()), *self.constraints.get(info.op_type, ())):
            why = fn(info)
            if why:
                return why
        return None


_TABLES: dict[str, OpTable] = {}


def _table(name: str) -> OpTable:
    try:
        return _TABLES[name]
    except KeyError:
        raise InputError(f"unknown op-support target {name!r}; known targets: {', '.join(sorted(_TABLES))}") from None


def constraint(target: str, *ops: str) -> Callable[[Constraint], Constraint]:
    """Decorator: register ``fn(node_info) -> reason | None`` for ``ops`` ("*" = every op) of ``target``."""

    def deco(fn: Constraint) -> Constraint:
        table = _table(target)
        for op in ops or ("*",):
            table.constraints.setdefault(op, []).append(fn)
        return fn

    return deco


def targets() -> list[str]:
    """The names of every op-support target."""
    _ensure_coreml()
    return sorted(_TABLES)


def get_table(target: str) -> OpTable:
    """The :class:`OpTable` of ``target`` (an unknown name is an :class:`InputError` listing the known ones)."""
    if target == "coreml":
        _ensure_coreml()
    return _table(target)


# --------------------------------------------------------------------------------------------------------------
# ONNX Runtime: full, and reduced builds (ORT mobile packages ship only the kernels a config file names).

_TABLES["onnxruntime"] = OpTable("onnxruntime", None, "ONNX Runtime (full build): every standard ONNX op",
                                 domains=("", "ai.onnx", "ai.onnx.ml", "com.microsoft"))


def parse_reduced_config(text: str) -> set[str]:
    """Op types from an ORT reduced-build config (``domain;opset;Op1,Op2`` lines) or a plain list.

    Plain lists may separate op types by commas, whitespace or newlines; ``#`` starts a comment.
    """
    ops: set[str] = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if ";" in line:
            parts = line.split(";")
            if len(parts) < 3:
                raise InputError(f"bad ORT config line {raw!r}: expected 'domain;opset;Op1,Op2'")
            line = parts[2]
        ops.update(tok for tok in line.replace(",", " ").split() if tok)
    return ops


def reduced_onnxruntime(ops: Iterable[str] | str | Path, name: str = "onnxruntime-reduced") -> OpTable:
    """Register (and return) a reduced ONNX Runtime table from a list of op types or a config file path."""
    if isinstance(ops, (str, Path)) and Path(ops).is_file():
        op_set = parse_reduced_config(Path(ops).read_text())
    elif isinstance(ops, str):
        op_set = parse_reduced_config(ops)
    else:
        op_set = set(ops)
    if not op_set:
        raise InputError("a reduced ONNX Runtime build needs at least one op type")
    table = OpTable(name, frozenset(op_set), f"ONNX Runtime reduced build ({len(op_set)} op types)")
    _TABLES[name] = table
    return table


#: a typical ORT mobile package's op set (the default of "onnxruntime-reduced"; replace it with
#: :func:`reduced_onnxruntime` from your own required_operators.config)
ORT_MOBILE_DEFAULT = (
    "Add Sub Mul Div Relu Clip Sigmoid Tanh Conv ConvTranspose MatMul Gemm MaxPool AveragePool "
    "GlobalAveragePool Concat Reshape Transpose Squeeze Unsqueeze Flatten Softmax Gather Shape Slice Cast "
    "Resize Pad ReduceMean BatchNormalization LeakyRelu HardSigmoid HardSwish Identity Constant Split "
    "QuantizeLinear DequantizeLinear QLinearConv QLinearMatMul DynamicQuantizeLinear MatMulInteger ConvInteger"
).split()
reduced_onnxruntime(ORT_MOBILE_DEFAULT)

# --------------------------------------------------------------------------------------------------------------
# TFLite: the LiteRT builtin each ONNX op becomes through the ONNX->TFLite converters (onnx2tf / TF lowering).
# Ops missing here become Flex (SELECT_TF_OPS) ops or fail to convert, and LiteRT's builtin interpreter
# cannot run Flex ops.

TFLITE_BUILTINS: dict[str, str] = {
    "Abs": "ABS", "Add": "ADD", "And": "LOGICAL_AND", "ArgMax": "ARG_MAX", "ArgMin": "ARG_MIN",
    "AveragePool": "AVERAGE_POOL_2D", "BatchNormalization": "MUL+ADD", "Cast": "CAST", "Ceil": "CEIL",
    "Clip": "RELU6/MINIMUM+MAXIMUM", "Concat": "CONCATENATION", "Constant": "(constant)",
    "Conv": "CONV_2D/DEPTHWISE_CONV_2D", "ConvTranspose": "TRANSPOSE_CONV", "Cos": "COS",
    "DepthToSpace": "DEPTH_TO_SPACE", "DequantizeLinear": "DEQUANTIZE", "Div": "DIV", "Elu": "ELU",
    "Equal": "EQUAL", "Exp": "EXP", "Expand": "BROADCAST_TO", "Flatten": "RESHAPE", "Floor": "FLOOR",
    "Gather": "GATHER", "GatherND": "GATHER_ND", "Gelu": "GELU", "Gemm": "FULLY_CONNECTED",
    "GlobalAveragePool": "MEAN", "GlobalMaxPool": "REDUCE_MAX", "Greater": "GREATER",
    "GreaterOrEqual": "GREATER_EQUAL", "HardSigmoid": "HARD_SWISH-family", "HardSwish": "HARD_SWISH",
    "Identity": "(none)", "InstanceNormalization": "MEAN+SUB+MUL", "LayerNormalization": "MEAN+SQUARED_DIFFERENCE",
    "LeakyRelu": "LEAKY_RELU", "Less": "LESS", "LessOrEqual": "LESS_EQUAL", "Log": "LOG",
    "LogSoftmax": "LOG_SOFTMAX", "MatMul": "BATCH_MATMUL/FULLY_CONNECTED", "Max": "MAXIMUM",
    "MaxPool": "MAX_POOL_2D", "Mean": "ADD+MUL", "Min": "MINIMUM", "Mul": "MUL", "Neg": "NEG", "Not": "LOGICAL_NOT",
    "Or": "LOGICAL_OR", "Pad": "PAD/MIRROR_PAD", "Pow": "POW", "PRelu": "PRELU", "QuantizeLinear": "QUANTIZE",
    "Reciprocal": "DIV", "ReduceMax": "REDUCE_MAX", "ReduceMean": "MEAN", "ReduceMin": "REDUCE_MIN",
    "ReduceProd": "REDUCE_PROD", "ReduceSum": "SUM", "Relu": "RELU", "Reshape": "RESHAPE",
    "Resize": "RESIZE_BILINEAR/RESIZE_NEAREST_NEIGHBOR", "Round": "ROUND", "Shape": "SHAPE",
    "Sigmoid": "LOGISTIC", "Sign": "SIGN", "Sin": "SIN", "Slice": "STRIDED_SLICE", "Softmax": "SOFTMAX",
    "Softplus": "EXP+LOG", "SpaceToDepth": "SPACE_TO_DEPTH", "Split": "SPLIT/SPLIT_V", "Sqrt": "SQRT",
    "Squeeze": "SQUEEZE", "Sub": "SUB", "Sum": "ADD_N", "Tanh": "TANH", "Tile": "TILE", "TopK": "TOPK_V2",
    "Transpose": "TRANSPOSE", "Unsqueeze": "RESHAPE", "Where": "SELECT_V2",
}
_TABLES["tflite"] = OpTable("tflite", frozenset(TFLITE_BUILTINS), "LiteRT builtin ops (no Flex delegate)")

#: dtypes LiteRT builtin kernels handle
_TFLITE_DTYPES = {np.dtype(t) for t in ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")}


@constraint("tflite", "*")
def _tflite_dtypes(node: NodeInfo) -> str | None:
    bad = sorted(d.name for d in node.dtypes() - _TFLITE_DTYPES)
    return f"{node.op_type} uses {', '.join(bad)}, which LiteRT builtins do not support" if bad else None


@constraint("tflite", "*")
def _tflite_rank(node: NodeInfo) -> str | None:
    # most LiteRT kernels stop at rank 5 (broadcasting ops at 6)
    return f"{node.op_type} has a rank-{node.max_rank()} tensor (LiteRT kernels go up to 5)" \
        if node.max_rank() > 5 else None


@constraint("tflite", "Conv", "ConvTranspose", "MaxPool", "AveragePool")
def _tflite_2d_only(node: NodeInfo) -> str | None:
    x = node.inputs[0] if node.inputs else None
    if x is not None and x.rank is not None and x.rank not in (3, 4):
        return f"{node.op_type} on a rank-{x.rank} input (LiteRT has 1-D/2-D variants only)"
    group = node.attr("group", 1)
    if node.op_type == "Conv" and group != 1:
        cin = x.shape[1] if x is not None and x.shape is not None and len(x.shape) > 1 else None
        if group != cin:
            return f"grouped Conv (group={group}, {cin} input channels) that is not depthwise has no LiteRT builtin"
    return None


@constraint("tflite", "Resize")
def _tflite_resize(node: NodeInfo) -> str | None:
    mode = node.attr("mode", "nearest")
    if mode not in ("nearest", "linear"):
        return f"Resize mode {mode!r} (LiteRT has nearest and bilinear)"
    return None


@constraint("tflite", "Pad")
def _tflite_pad(node: NodeInfo) -> str | None:
    mode = node.attr("mode", "constant")
    return None if mode in ("constant", "reflect", "edge") else f"Pad mode {mode!r} has no LiteRT builtin"


# --------------------------------------------------------------------------------------------------------------
# Core ML: the ONNX->MIL translator's own table (converters/onnx_to_mil.py), read when it is importable.

#: used only while the translator module is not installed: the ops its first version covered
_COREML_FALLBACK = (
    "Add Sub Mul Div Relu Sigmoid Tanh Conv MatMul Gemm Reshape Transpose Softmax Flatten Concat "
    "GlobalAveragePool MaxPool AveragePool BatchNormalization Clip Identity Constant"
).split()


def _ensure_coreml() -> None:
    if "coreml" in _TABLES:
        return
    supported: Sequence[str] = _COREML_FALLBACK
    node_check = None
    desc = "Core ML (built-in fallback table: converters/onnx_to_mil.py not found)"
    try:
        from edgekit.converters import onnx_to_mil as mil
    except ImportError:
        mil = None
    if mil is not None and getattr(mil, "SUPPORTED_OPS", None):
        supported = list(mil.SUPPORTED_OPS)
        node_check = getattr(mil, "supports", None)
        desc = "Core ML via the ONNX->MIL translator's table"
    _TABLES["coreml"] = OpTable("coreml", frozenset(supported), desc, node_check=node_check)


# --------------------------------------------------------------------------------------------------------------
# Node facts for a whole model


class NodeSupport:
    """Answers 'does ``target`` run this node, and if not why' for the nodes of one model."""

    def __init__(self, model: Any, table: OpTable, forced: Iterable[str] = ()):
        import onnx
        from onnx import helper

        self.table = table
        self.forced = frozenset(forced)
        self._opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # a model shape inference cannot handle: constraints see unknown types
            inferred = model
        g = inferred.graph
        self._consts = {t.name for t in g.initializer}
        self._types: dict[str, tuple] = {}
        for t in g.initializer:
            self._types[t.name] = (np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)), tuple(t.dims))
        for vi in (*g.input, *g.value_info, *g.output):
            tt = vi.type.tensor_type
            if not tt.elem_type:
                continue
            shape = None
            if tt.HasField("shape"):
                shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
            self._types.setdefault(vi.name, (np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)), shape))

    @classmethod
    def for_model(cls, model: Any, target: str | OpTable, forced: Iterable[str] = ()) -> NodeSupport:
        table = target if isinstance(target, OpTable) else get_table(target)
        return cls(model, table, forced)

    def _tensor(self, name: str) -> TensorInfo | None:
        if not name:
            return None
        dtype, shape = self._types.get(name, (None, None))
        return TensorInfo(name, dtype, shape, name in self._consts)

    def info(self, node: Any) -> NodeInfo:
        from onnx import helper

        attrs = {}
        for a in node.attribute:
            try:
                v = helper.get_attribute_value(a)
            except Exception:
                v = None
            attrs[a.name] = v.decode() if isinstance(v, bytes) else v
        return NodeInfo(node.op_type, node.domain, node.name, attrs,
                        tuple(self._tensor(n) for n in node.input), tuple(self._tensor(n) for n in node.output),
                        self._opset)

    def reason(self, node: Any) -> str | None:
        """None when the target runs ``node``; else why not (forced ops included)."""
        if node.op_type in self.forced:
            return f"{node.op_type} forced onto TVM (--fallback-ops)"
        return self.table.reason(self.info(node), node)

    def unsupported(self, model: Any) -> list[tuple[Any, str]]:
        """(node, reason) for every node of ``model`` the target does not run."""
        out = []
        for node in model.graph.node:
            why = self.reason(node)
            if why:
                out.append((node, why))
        return out


def unsupported_ops(model: Any, target: str, forced: Iterable[str] = ()) -> dict[str, str]:
    """{op_type: first reason} for the ops of ``model`` that ``target`` cannot run."""
    sup = NodeSupport.for_model(model, target, forced)
    out: dict[str, str] = {}
    for node, why in sup.unsupported(model):
        out.setdefault(node.op_type, why)
    return out


# --------------------------------------------------------------------------------------------------------------
# ONNX Runtime (full): a standard op can still lack a kernel for some dtype; ask ORT itself, once per signature.

_ORT_PROBES: dict[tuple, str | None] = {}


@constraint("onnxruntime", "*")
def _ort_has_kernel(node: NodeInfo) -> str | None:
    """Build the node alone and let ONNX Runtime create a session for it (cached per op/dtypes/attributes)."""
    if any(t is None or t.dtype is None or t.shape is None for t in (*node.inputs, *node.outputs) if t is not None):
        return None  # not enough type facts to probe: assume ORT has it
    if node.domain not in ("", "ai.onnx") or any(isinstance(v, (list, tuple)) and v and not isinstance(
            v[0], (int, float, str, bytes)) for v in node.attrs.values()):
        return None
    key = (node.op_type, node.opset, tuple((t.dtype.str, t.rank, t.constant) if t else None for t in node.inputs),
           tuple((t.dtype.str, t.rank) if t else None for t in node.outputs), repr(sorted(node.attrs.items())))
    if key not in _ORT_PROBES:
        _ORT_PROBES[key] = _probe_ort(node)
    return _ORT_PROBES[key]


def _probe_ort(node: NodeInfo) -> str | None:
    import onnx
    from onnx import helper

    try:
        import onnxruntime as ort
    except ImportError:
        return None

    def vi(t: TensorInfo, name: str):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(t.dtype),
                                             [d if isinstance(d, int) else None for d in t.shape])

    ins = [f"i{k}" if t is not None else "" for k, t in enumerate(node.inputs)]
    outs = [f"o{k}" if t is not None else "" for k, t in enumerate(node.outputs)]
    try:
        n = helper.make_node(node.op_type, ins, outs, **{k: v for k, v in node.attrs.items() if v is not None})
        g = helper.make_graph([n], "probe", [vi(t, ins[k]) for k, t in enumerate(node.inputs) if t is not None],
                              [vi(t, outs[k]) for k, t in enumerate(node.outputs) if t is not None])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", node.opset)])
        m.ir_version = min(m.ir_version, onnx.IR_VERSION)
        data = m.SerializeToString()
    except Exception:  # noqa: BLE001 - cannot rebuild the node alone: no verdict
        return None
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT's own exception types
        msg = str(exc)
        if "NOT_IMPLEMENTED" in msg or "Could not find an implementation" in msg:
            dtypes = ", ".join(sorted(d.name for d in node.dtypes()))
            return f"ONNX Runtime has no {node.op_type} kernel for {dtypes}"
    return None
