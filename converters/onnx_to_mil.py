"""ONNX -> Core ML MIL translator built on ``coremltools.converters.mil.Builder``.

coremltools has no ONNX frontend, so edgekit carries its own: ONE table (``SUPPORTED_OPS``) maps each ONNX op
type to one small function that emits MIL ops. A node outside the table raises
:class:`edgekit.errors.UnsupportedOpError` naming the node and its op type; ``supports(node)`` exposes the
same table as op-support data (used by other targets' planners).

Conventions handled here: ONNX pads ``[b0, b1, ..., e0, e1, ...]`` become MIL ``[b0, e0, b1, e1, ...]``;
int64 tensors (inputs, initializers, casts) are narrowed to int32 because Core ML has no int64 tensors
(``narrowed_inputs`` in :class:`MilTranslation` lists the inputs whose dtype changed); float64 becomes fp32.
Dynamic input dims become MIL symbols (flexible shapes) unless ``input_shapes`` pins them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConversionError, InputError, UnsupportedOpError

Handler = Callable[["_Ctx"], Any]

#: ONNX op type -> translation function (the single source of truth for Core ML op support)
SUPPORTED_OPS: dict[str, Handler] = {}

# ONNX TensorProto data types -> numpy dtype used in MIL (int64 narrowed to int32, float64 to float32)
_ONNX_TO_NP = {1: np.float32, 10: np.float16, 11: np.float32, 6: np.int32, 7: np.int32, 9: np.bool_,
               2: np.int32, 3: np.int32, 4: np.int32, 5: np.int32, 12: np.int32}
_CAST_TO = {1: "fp32", 10: "fp16", 11: "fp32", 6: "int32", 7: "int32", 9: "bool", 2: "int32", 3: "int32",
            4: "int32", 5: "int32", 12: "int32"}


def _op(*names: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for n in names:
            SUPPORTED_OPS[n] = fn
        return fn
    return deco


def supports(node) -> bool:
    """True when the ONNX ``node`` (a NodeProto, or an op-type string) is in the translation table."""
    op_type = node if isinstance(node, str) else node.op_type
    domain = "" if isinstance(node, str) else node.domain
    return domain in ("", "ai.onnx") and op_type in SUPPORTED_OPS


def mil_name(name: str) -> str:
    """An ONNX tensor name made valid as a Core ML feature / MIL var name."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else f"t_{s}"


@dataclass
class MilTranslation:
    """The result of :func:`translate`: a MIL program plus the naming and dtype facts the package records."""

    program: Any
    input_names: dict[str, str]            # ONNX input name -> MIL / Core ML feature name
    output_names: dict[str, str]           # ONNX output name -> MIL / Core ML feature name
    narrowed_inputs: dict[str, str] = field(default_factory=dict)  # ONNX input -> "int64->int32"
    op_counts: dict[str, int] = field(default_factory=dict)        # ONNX op type -> count
    node_weights: dict[str, list[str]] = field(default_factory=dict)  # ONNX node -> MIL names of its weights

    def weight_owner(self, mil_const: str) -> list[str]:
        """ONNX nodes whose initializer a (possibly renamed: ``_T``, ``_to_fp16``) MIL weight const is."""
        base = re.sub(r"_T\d*$", "", re.sub(r"_to_fp(16|32)$", "", mil_const))
        return [n for n, ws in self.node_weights.items() if base in ws]


class _Ctx:
    """Per-node view handed to each translation function."""

    def __init__(self, env: dict, consts: dict, opset: int):
        self.env = env          # ONNX name -> MIL Var
        self.consts = consts    # ONNX name -> numpy (initializers, Constant outputs), made into Vars lazily
        self.opset = opset
        self.node = None
        self._taken: set[str] = set()

    # -- inputs ---------------------------------------------------------------------------------------
    def has(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def var(self, i: int):
        from coremltools.converters.mil import Builder as mb

        name = self.node.input[i]
        if name not in self.env:
            if name not in self.consts:
                raise ConversionError(f"node {self.node.name!r}: input {name!r} is produced by no earlier node")
            self.env[name] = mb.const(val=self.consts[name], name=mil_name(name))
        return self.env[name]

    def val(self, i: int, what: str = "input") -> np.ndarray | None:
        """The compile-time value of input ``i`` (None when absent); raise if it is not a constant."""
        if not self.has(i):
            return None
        name = self.node.input[i]
        if name in self.consts:
            return np.asarray(self.consts[name])
        v = self.env[name].val if name in self.env else None
        if v is None:
            raise self.unsupported(f"its {what} ({name!r}) must be a constant for Core ML")
        return np.asarray(v)

    def shape(self, i: int) -> tuple:
        name = self.node.input[i]
        if name in self.consts:
            return tuple(np.shape(self.consts[name]))
        return tuple(self.var(i).shape)

    def attr(self, name: str, default: Any = None) -> Any:
        from onnx import helper

        for a in self.node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    def fresh(self, base: str) -> str:
        """A MIL name not used yet for a derived constant of ``base`` (``base_T``, ``base_T1``, ...)."""
        name, i = f"{base}_T", 1
        while name in self._taken:
            name, i = f"{base}_T{i}", i + 1
        self._taken.add(name)
        return name

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"Core ML export: node {self.node.name or '<unnamed>'!r} (op {self.node.op_type}) is not supported: {why}")


def _np_const(arr: np.ndarray) -> np.ndarray:
    """A constant in a dtype MIL has; int64 saturates to int32 (Slice's INT64_MAX "to the end" stays huge)."""
    arr = np.asarray(arr)
    if arr.dtype == np.int64 or arr.dtype == np.uint64:
        info = np.iinfo(np.int32)
        return np.clip(arr, info.min, info.max).astype(np.int32)
    if arr.dtype == np.float64:
        return arr.astype(np.float32)
    return arr


# ---------------------------------------------------------------------------------------------------------
# The translation table: one small function per ONNX op type.
# ---------------------------------------------------------------------------------------------------------

def _mb():
    from coremltools.converters.mil import Builder as mb

    return mb


def _unary(mil_op: str) -> Handler:
    def fn(c: _Ctx):
        return getattr(_mb(), mil_op)(x=c.var(0))
    return fn


for _onnx, _mil in {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Erf": "erf", "Sqrt": "sqrt",
                    "Exp": "exp", "Log": "log", "Abs": "abs", "Floor": "floor", "Ceil": "ceil",
                    "Identity": "identity"}.items():
    SUPPORTED_OPS[_onnx] = _unary(_mil)


def _binary(mil_op: str) -> Handler:
    def fn(c: _Ctx):
        return getattr(_mb(), mil_op)(x=c.var(0), y=c.var(1))
    return fn


for _onnx, _mil in {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "real_div", "Pow": "pow",
                    "MatMul": "matmul"}.items():
    SUPPORTED_OPS[_onnx] = _binary(_mil)


for _onnx, _mil in {"And": "logical_and", "Or": "logical_or", "Xor": "logical_xor", "Equal": "equal",
                    "Less": "less", "Greater": "greater", "LessOrEqual": "less_equal",
                    "GreaterOrEqual": "greater_equal"}.items():
    SUPPORTED_OPS[_onnx] = _binary(_mil)
SUPPORTED_OPS["Not"] = _unary("logical_not")


@_op("IsNaN")
def _isnan(c: _Ctx):
    x = c.var(0)
    return _mb().not_equal(x=x, y=x)  # NaN is the only value unequal to itself


@_op("Where")
def _where(c: _Ctx):
    return _mb().select(cond=c.var(0), a=c.var(1), b=c.var(2))


@_op("Expand")
def _expand(c: _Ctx):
    shape = c.shape(0)
    if not all(isinstance(d, (int, np.integer)) for d in shape):
        raise c.unsupported("Expand of a tensor with symbolic dims")
    target = np.broadcast_shapes(tuple(int(d) for d in shape), tuple(int(d) for d in c.val(1, "shape")))
    x = c.var(0)
    if len(target) > len(shape):
        x = _mb().reshape(x=x, shape=np.array((1,) * (len(target) - len(shape)) + tuple(shape), np.int32))
    xs = (1,) * (len(target) - len(shape)) + tuple(int(d) for d in shape)
    reps = [t // s for t, s in zip(target, xs)]
    return x if all(r == 1 for r in reps) else _mb().tile(x=x, reps=reps)


@_op("Max", "Min", "Sum", "Mean")
def _variadic(c: _Ctx):
    mb = _mb()
    fn = {"Max": mb.maximum, "Min": mb.minimum, "Sum": mb.add, "Mean": mb.add}[c.node.op_type]
    out = c.var(0)
    for i in range(1, len(c.node.input)):
        out = fn(x=out, y=c.var(i))
    if c.node.op_type == "Mean" and len(c.node.input) > 1:
        out = mb.real_div(x=out, y=np.float32(len(c.node.input)))
    return out


@_op("Neg")
def _neg(c: _Ctx):
    return _mb().mul(x=c.var(0), y=np.float32(-1.0))


@_op("Reciprocal")
def _reciprocal(c: _Ctx):
    return _mb().real_div(x=np.float32(1.0), y=c.var(0))


@_op("Gelu")
def _gelu(c: _Ctx):
    mode = "TANH_APPROXIMATION" if c.attr("approximate", "none") == "tanh" else "EXACT"
    return _mb().gelu(x=c.var(0), mode=mode)


@_op("HardSigmoid")
def _hard_sigmoid(c: _Ctx):
    return _mb().sigmoid_hard(x=c.var(0), alpha=float(c.attr("alpha", 0.2)), beta=float(c.attr("beta", 0.5)))


@_op("HardSwish")
def _hard_swish(c: _Ctx):
    mb = _mb()
    x = c.var(0)
    return mb.mul(x=x, y=mb.sigmoid_hard(x=x, alpha=1.0 / 6, beta=0.5))


@_op("LeakyRelu")
def _leaky_relu(c: _Ctx):
    return _mb().leaky_relu(x=c.var(0), alpha=float(c.attr("alpha", 0.01)))


@_op("Clip")
def _clip(c: _Ctx):
    mb = _mb()
    if c.opset < 11:
        lo, hi = c.attr("min"), c.attr("max")
    else:
        lo = c.val(1, "min") if c.has(1) else None
        hi = c.val(2, "max") if c.has(2) else None
    x = c.var(0)
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    if lo == 0.0 and hi == 6.0:
        return mb.relu6(x=x)
    if lo is not None and hi is not None:
        return mb.clip(x=x, alpha=np.float32(lo), beta=np.float32(hi))
    if lo is not None:
        x = mb.maximum(x=x, y=np.float32(lo))
    if hi is not None:
        x = mb.minimum(x=x, y=np.float32(hi))
    return x


def _spatial(c: _Ctx, rank: int) -> dict:
    """MIL padding/stride/dilation arguments of a Conv or pooling node with ``rank`` spatial dims."""
    auto_pad = c.attr("auto_pad", "NOTSET")
    strides = list(c.attr("strides", [1] * rank))
    args: dict = {"strides": strides}
    if auto_pad in ("NOTSET", ""):
        pads = list(c.attr("pads", [0] * (2 * rank)))
        args["pad_type"] = "custom"
        args["pad"] = [p for i in range(rank) for p in (pads[i], pads[i + rank])]  # [b0,b1,e0,e1] -> [b0,e0,b1,e1]
    elif auto_pad == "VALID":
        args["pad_type"] = "valid"
    elif auto_pad == "SAME_UPPER":
        args["pad_type"] = "same"
    elif auto_pad == "SAME_LOWER":
        args["pad_type"] = "same_lower"
    else:
        raise c.unsupported(f"auto_pad={auto_pad!r}")
    return args


@_op("Conv")
def _conv(c: _Ctx):
    mb = _mb()
    w = c.var(1)
    rank = len(c.shape(1)) - 2
    args = _spatial(c, rank)
    args["dilations"] = list(c.attr("dilations", [1] * rank))
    args["groups"] = int(c.attr("group", 1))
    if c.has(2):
        args["bias"] = c.var(2)
    return mb.conv(x=c.var(0), weight=w, **args)


@_op("ConvTranspose")
def _conv_transpose(c: _Ctx):
    """ONNX ConvTranspose (weight ``[C_in, C_out/group, *k]``, as MIL's); ``output_padding`` / ``output_shape``
    become MIL's ``output_shape`` (static spatial dims only)."""
    rank = len(c.shape(1)) - 2
    args = _spatial(c, rank)
    if args["pad_type"] != "custom":
        raise c.unsupported(f"auto_pad={c.attr('auto_pad')!r} on ConvTranspose")
    args["dilations"] = list(c.attr("dilations", [1] * rank))
    args["groups"] = int(c.attr("group", 1))
    if c.has(2):
        args["bias"] = c.var(2)
    extra, given = list(c.attr("output_padding", [0] * rank)), c.attr("output_shape")
    if any(extra) or given:
        x_shape, k = c.shape(0), c.shape(1)[2:]
        if not all(isinstance(d, (int, np.integer)) for d in x_shape[2:]):
            raise c.unsupported("output_padding/output_shape with dynamic spatial dims; fix the input shapes")
        out = list(given)[-rank:] if given else [
            (int(x_shape[2 + i]) - 1) * args["strides"][i] + (int(k[i]) - 1) * args["dilations"][i] + 1
            - args["pad"][2 * i] - args["pad"][2 * i + 1] + extra[i] for i in range(rank)]
        cout = int(c.shape(1)[1]) * args["groups"]
        args["output_shape"] = np.array([int(x_shape[0]) if isinstance(x_shape[0], (int, np.integer)) else 1,
                                         cout, *out], np.int32)
    return _mb().conv_transpose(x=c.var(0), weight=c.var(1), **args)


@_op("Resize")
def _resize(c: _Ctx):
    """Nearest-neighbour upsampling by whole factors on H/W (``asymmetric`` + ``floor``, as Paddle2ONNX and
    torch's ``interpolate(mode="nearest")`` export it): MIL ``upsample_nearest_neighbor``."""
    mode = c.attr("mode", "nearest")
    how = (c.attr("coordinate_transformation_mode", "half_pixel"), c.attr("nearest_mode", "round_prefer_floor"))
    if mode != "nearest" or how != ("asymmetric", "floor"):
        raise c.unsupported(f"mode={mode!r} with coordinate_transformation_mode/nearest_mode {how}")
    shape = c.shape(0)
    scales = c.val(2, "scales") if c.has(2) and np.size(c.val(2, "scales")) else None
    if scales is None:
        sizes = c.val(3, "sizes") if c.has(3) else None
        if sizes is None or not all(isinstance(d, (int, np.integer)) for d in shape):
            raise c.unsupported("sizes on dynamic input dims (fix the input shapes)")
        scales = np.asarray(sizes, np.float64) / np.asarray(shape, np.float64)
    scales = [float(v) for v in scales]
    if len(scales) != 4 or scales[:2] != [1.0, 1.0] or any(v < 1 or v != int(v) for v in scales[2:]):
        raise c.unsupported(f"scales {scales} (only whole upsampling factors on H and W)")
    return _mb().upsample_nearest_neighbor(x=c.var(0), scale_factor_height=int(scales[2]),
                                           scale_factor_width=int(scales[3]))


@_op("Split")
def _split(c: _Ctx):
    """Split by sizes (the ``split`` input from opset 13, the attribute before) or into equal parts."""
    axis = int(c.attr("axis", 0))
    sizes = c.val(1, "split") if c.opset >= 13 and c.has(1) else c.attr("split")
    n = len(c.node.output)
    if sizes is not None and len(sizes):
        outs = _mb().split(x=c.var(0), split_sizes=np.array([int(v) for v in sizes], np.int32), axis=axis)
    else:
        outs = _mb().split(x=c.var(0), num_splits=n, axis=axis)
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


@_op("Shape")
def _shape(c: _Ctx):
    """A constant when the input's dims are static (so Gather/Concat/Reshape chains fold), else MIL ``shape``."""
    shape = c.shape(0)
    start, end = int(c.attr("start", 0)), c.attr("end")
    if all(isinstance(d, (int, np.integer)) for d in shape):
        return np.array(shape, np.int32)[start:None if end is None else int(end)]
    full = _mb().shape(x=c.var(0))
    if start == 0 and end is None:
        return full
    return _mb().slice_by_index(x=full, begin=np.array([start], np.int32),
                                end=np.array([0 if end is None else int(end)], np.int32),
                                end_mask=[end is None])


def _pool(mil_op: str) -> Handler:
    def fn(c: _Ctx):
        kernel = list(c.attr("kernel_shape"))
        args = _spatial(c, len(kernel))
        if any(d != 1 for d in c.attr("dilations", [1] * len(kernel))):
            raise c.unsupported("dilated pooling")
        if len(c.node.output) > 1 and c.node.output[1]:
            raise c.unsupported("the Indices output of MaxPool")
        args["ceil_mode"] = bool(c.attr("ceil_mode", 0))
        if mil_op == "avg_pool":
            args["exclude_padding_from_average"] = not bool(c.attr("count_include_pad", 0))
        return getattr(_mb(), mil_op)(x=c.var(0), kernel_sizes=kernel, **args)
    return fn


SUPPORTED_OPS["AveragePool"] = _pool("avg_pool")
SUPPORTED_OPS["MaxPool"] = _pool("max_pool")


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c: _Ctx):
    mb = _mb()
    axes = list(range(2, len(c.shape(0))))
    fn = mb.reduce_mean if c.node.op_type == "GlobalAveragePool" else mb.reduce_max
    return fn(x=c.var(0), axes=axes, keep_dims=True)


@_op("BatchNormalization")
def _batch_norm(c: _Ctx):
    if c.attr("training_mode", 0):
        raise c.unsupported("training_mode=1")
    return _mb().batch_norm(x=c.var(0), gamma=c.var(1), beta=c.var(2), mean=c.var(3), variance=c.var(4),
                            epsilon=np.float32(c.attr("epsilon", 1e-5)))


@_op("LayerNormalization")
def _layer_norm(c: _Ctx):
    rank = len(c.shape(0))
    axis = int(c.attr("axis", -1)) % rank
    if any(o for o in c.node.output[1:]):
        raise c.unsupported("the Mean/InvStdDev outputs")
    args = {"gamma": c.var(1)}
    if c.has(2):
        args["beta"] = c.var(2)
    return _mb().layer_norm(x=c.var(0), axes=list(range(axis, rank)), epsilon=np.float32(c.attr("epsilon", 1e-5)),
                            **args)


@_op("Softmax")
def _softmax(c: _Ctx):
    rank = len(c.shape(0))
    axis = int(c.attr("axis", -1 if c.opset >= 13 else 1)) % rank
    if c.opset < 13 and axis != rank - 1:
        raise c.unsupported("opset < 13 Softmax over a non-last axis (flattening semantics)")
    return _mb().softmax(x=c.var(0), axis=axis)


@_op("Gemm")
def _gemm(c: _Ctx):
    mb = _mb()
    alpha, beta = float(c.attr("alpha", 1.0)), float(c.attr("beta", 1.0))
    trans_a, trans_b = bool(c.attr("transA", 0)), bool(c.attr("transB", 0))
    b_val = c.consts.get(c.node.input[1])
    if b_val is not None and not trans_a and alpha == 1.0 and (beta == 1.0 or not c.has(2)):
        if trans_b:
            weight = c.var(1)
        else:  # named after the initializer so weight compression can find (and skip) it by ONNX node
            weight = mb.const(val=np.ascontiguousarray(np.asarray(b_val).T), name=c.fresh(mil_name(c.node.input[1])))
        args = {}
        if c.has(2):
            bias = c.consts.get(c.node.input[2])
            if bias is not None and np.size(bias) in (1, weight.shape[0]):
                args["bias"] = np.broadcast_to(np.asarray(bias, np.float32).reshape(-1), (weight.shape[0],)).copy()
            else:
                return mb.add(x=mb.linear(x=c.var(0), weight=weight), y=c.var(2))
        return mb.linear(x=c.var(0), weight=weight, **args)
    out = mb.matmul(x=c.var(0), y=c.var(1), transpose_x=trans_a, transpose_y=trans_b)
    if alpha != 1.0:
        out = mb.mul(x=out, y=np.float32(alpha))
    if c.has(2):
        cvar = c.var(2) if beta == 1.0 else mb.mul(x=c.var(2), y=np.float32(beta))
        out = mb.add(x=out, y=cvar)
    return out


@_op("Flatten")
def _flatten(c: _Ctx):
    shape = c.shape(0)
    axis = int(c.attr("axis", 1)) % (len(shape) + 1) if shape else 0
    head, tail = shape[:axis], shape[axis:]
    if all(isinstance(d, (int, np.integer)) for d in tail):
        new = [int(np.prod(tail))]
        if all(isinstance(d, (int, np.integer)) for d in head):
            new.insert(0, int(np.prod(head)))
        else:
            new.insert(0, -1)
    elif all(isinstance(d, (int, np.integer)) for d in head):
        new = [int(np.prod(head)), -1]
    else:
        raise c.unsupported("flattening symbolic dims on both sides of the axis")
    return _mb().reshape(x=c.var(0), shape=np.array(new, np.int32))


@_op("Reshape")
def _reshape(c: _Ctx):
    target = [int(d) for d in c.val(1, "shape")]
    shape = c.shape(0)
    if c.attr("allowzero", 0) and 0 in target:
        raise c.unsupported("allowzero=1 with a 0 in the shape")
    if 0 in target:
        keep_zero = len(target) == len(shape)
        out = []
        for i, d in enumerate(target):
            if d != 0:
                out.append(d)
            elif isinstance(shape[i], (int, np.integer)):
                out.append(int(shape[i]))
            elif keep_zero:
                out.append(0)
            else:
                raise c.unsupported("a 0 in the shape copying a symbolic dim across a rank change")
        target = out
    return _mb().reshape(x=c.var(0), shape=np.array(target, np.int32))


@_op("Transpose")
def _transpose(c: _Ctx):
    rank = len(c.shape(0))
    perm = list(c.attr("perm", list(range(rank))[::-1]))
    return _mb().transpose(x=c.var(0), perm=perm)


def _axes(c: _Ctx, attr_before: int) -> list[int] | None:
    """Axes given as an attribute before opset ``attr_before`` and as input 1 from then on."""
    if c.opset < attr_before:
        a = c.attr("axes")
        return None if a is None else [int(x) for x in a]
    v = c.val(1, "axes")
    return None if v is None else [int(x) for x in np.ravel(v)]


@_op("Unsqueeze")
def _unsqueeze(c: _Ctx):
    return _mb().expand_dims(x=c.var(0), axes=_axes(c, 13))


@_op("Squeeze")
def _squeeze(c: _Ctx):
    axes = _axes(c, 13)
    return _mb().squeeze(x=c.var(0), axes=axes) if axes else _mb().squeeze(x=c.var(0))


def _reduce(mil_op: str) -> Handler:
    def fn(c: _Ctx):
        axes = _axes(c, 18 if c.node.op_type != "ReduceSum" else 13)
        x = c.var(0)
        if not axes:
            if c.attr("noop_with_empty_axes", 0):
                return _mb().identity(x=x)
            axes = list(range(len(c.shape(0))))
        return getattr(_mb(), mil_op)(x=x, axes=axes, keep_dims=bool(c.attr("keepdims", 1)))
    return fn


for _onnx, _mil in {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
                    "ReduceMin": "reduce_min"}.items():
    SUPPORTED_OPS[_onnx] = _reduce(_mil)


@_op("Concat")
def _concat(c: _Ctx):
    return _mb().concat(values=[c.var(i) for i in range(len(c.node.input))], axis=int(c.attr("axis")))


@_op("Gather")
def _gather(c: _Ctx):
    from coremltools.converters.mil.mil import types

    mb = _mb()
    idx = c.node.input[1]
    if idx in c.consts:
        indices = np.asarray(c.consts[idx]).astype(np.int32)
        if indices.size and indices.min() < 0:
            indices = np.where(indices < 0, indices + c.shape(0)[int(c.attr("axis", 0))], indices)
    else:
        indices = c.var(1)
    x = c.var(0)
    if x.dtype == types.bool:  # MIL gather takes no bool tensors: gather int32 and cast back
        return mb.cast(x=mb.gather(x=mb.cast(x=x, dtype="int32"), indices=indices, axis=int(c.attr("axis", 0))),
                       dtype="bool")
    return mb.gather(x=x, indices=indices, axis=int(c.attr("axis", 0)))


@_op("Cast")
def _cast(c: _Ctx):
    to = int(c.attr("to"))
    if to not in _CAST_TO:
        raise c.unsupported(f"Cast to ONNX data type {to}")
    return _mb().cast(x=c.var(0), dtype=_CAST_TO[to])


@_op("Constant")
def _constant(c: _Ctx):
    from onnx import numpy_helper

    for a in c.node.attribute:
        if a.name == "value":
            return _np_const(numpy_helper.to_array(a.t))
        if a.name in ("value_float", "value_int"):
            return _np_const(np.array(a.f if a.name == "value_float" else a.i))
        if a.name in ("value_floats", "value_ints"):
            return _np_const(np.array(list(a.floats) if a.name == "value_floats" else list(a.ints)))
    raise c.unsupported("a Constant without a dense value")


@_op("Slice")
def _slice(c: _Ctx):
    shape = c.shape(0)
    rank = len(shape)
    starts, ends = [int(v) for v in c.val(1, "starts")], [int(v) for v in c.val(2, "ends")]
    axes = [int(v) % rank for v in c.val(3, "axes")] if c.has(3) else list(range(len(starts)))
    steps = [int(v) for v in c.val(4, "steps")] if c.has(4) else [1] * len(starts)
    begin, end, stride = [0] * rank, [0] * rank, [1] * rank
    begin_mask, end_mask = [True] * rank, [True] * rank
    big = 2 ** 31 - 1
    for a, s, e, st in zip(axes, starts, ends, steps):
        stride[a] = st
        begin[a], begin_mask[a] = max(min(s, big), -big), False
        if (st > 0 and e >= big) or (st < 0 and e <= -big):
            end_mask[a] = True
        else:
            end[a], end_mask[a] = e, False
    return _mb().slice_by_index(x=c.var(0), begin=np.array(begin, np.int32), end=np.array(end, np.int32),
                                stride=np.array(stride, np.int32), begin_mask=begin_mask, end_mask=end_mask)


@_op("Pad")
def _pad(c: _Ctx):
    mode = c.attr("mode", "constant")
    if c.opset < 11:
        pads, value = list(c.attr("pads")), float(c.attr("value", 0.0))
    else:
        pads = [int(v) for v in c.val(1, "pads")]
        value = float(c.val(2, "constant_value")) if c.has(2) else 0.0
        if c.has(3):
            raise c.unsupported("the axes input of Pad")
    rank = len(pads) // 2
    mil_pad = [p for i in range(rank) for p in (pads[i], pads[i + rank])]
    if min(mil_pad) < 0:
        raise c.unsupported("negative pads")
    return _mb().pad(x=c.var(0), pad=np.array(mil_pad, np.int32), mode=mode, constant_val=np.float32(value))


# ONNX LSTM gate blocks i, o, f, c -> MIL i, f, o, z; ONNX peepholes i, o, f -> MIL i, f, o
_LSTM_GATES, _LSTM_PEEPS = [0, 2, 1, 3], [0, 2, 1]
# ONNX activation names MIL's lstm takes (with the ONNX defaults: HardSigmoid alpha 0.2, beta 0.5)
_LSTM_ACTS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu", "HardSigmoid": "hard_sigmoid"}
_LSTM_DIRS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _lstm_activations(c: _Ctx, dirs: int) -> dict[str, str]:
    """MIL's recurrent/cell/output activations from the ONNX ``activations`` (f, g, h per direction)."""
    if c.attr("activation_alpha") is not None or c.attr("activation_beta") is not None:
        raise c.unsupported("activation_alpha/activation_beta (MIL's lstm activations take no parameters)")
    acts = list(c.attr("activations", ["Sigmoid", "Tanh", "Tanh"] * dirs))
    if len(acts) != 3 * dirs or (dirs == 2 and acts[:3] != acts[3:]):
        raise c.unsupported(f"activations {acts} (MIL's lstm takes one f, g, h triple for both directions)")
    bad = [a for a in acts[:3] if a not in _LSTM_ACTS]
    if bad:
        raise c.unsupported(f"LSTM activation(s) {bad}; supported: {sorted(_LSTM_ACTS)}")
    return dict(zip(("recurrent_activation", "cell_activation", "activation"), (_LSTM_ACTS[a] for a in acts[:3])))


def _lstm_check(c: _Ctx) -> str:
    """Refuse LSTM attributes and inputs MIL's lstm cannot express; return the ONNX direction."""
    direction = c.attr("direction", "forward")
    if direction not in _LSTM_DIRS:
        raise c.unsupported(f"direction={direction!r}")
    if int(c.attr("layout", 0)) != 0:
        raise c.unsupported("layout=1 (batch-first); only layout=0 [seq, batch, input] is supported")
    if int(c.attr("input_forget", 0)):
        raise c.unsupported("input_forget=1 (coupled input/forget gates)")
    if c.attr("clip") is not None:  # ONNX clips the gates' pre-activations, Core ML the cell state
        raise c.unsupported("clip (ONNX clips activation inputs, MIL's lstm clips the cell state)")
    for i, what in ((0, "X"), (1, "W"), (2, "R")):
        if not c.has(i):
            raise c.unsupported(f"a missing {what} input")
    if c.has(4):
        lens, seq = c.val(4, "sequence_lens"), c.shape(0)[0]
        if not isinstance(seq, (int, np.integer)) or np.any(np.asarray(lens) != int(seq)):
            raise c.unsupported("sequence_lens other than the full sequence length (variable-length batches)")
    return direction


def _lstm_weights(c: _Ctx, d: int, hidden: int) -> dict[str, Any]:
    """MIL weight_ih/weight_hh/bias/peephole (ifoz order) of ONNX direction ``d``, as named constants."""
    mb, suffix = _mb(), "" if d == 0 else "_back"

    def gates(arr: np.ndarray, order: list[int]) -> np.ndarray:
        blocks = np.asarray(arr, np.float32).reshape((len(order), hidden) + np.shape(arr)[1:])
        return np.ascontiguousarray(blocks[order].reshape((len(order) * hidden,) + np.shape(arr)[1:]))

    def const(i: int, val: np.ndarray):  # named after the initializer so weight compression finds its node
        return mb.const(val=val, name=c.fresh(mil_name(c.node.input[i])))

    w = {f"weight_ih{suffix}": const(1, gates(c.val(1, "W")[d], _LSTM_GATES)),
         f"weight_hh{suffix}": const(2, gates(c.val(2, "R")[d], _LSTM_GATES))}
    if c.has(3):
        b = np.asarray(c.val(3, "B")[d], np.float32)
        w[f"bias{suffix}"] = const(3, gates(b[:4 * hidden] + b[4 * hidden:], _LSTM_GATES))
    if c.has(7):
        w[f"peephole{suffix}"] = const(7, gates(c.val(7, "P")[d], _LSTM_PEEPS))
    return w


def _lstm_state(c: _Ctx, i: int, dirs: int, hidden: int):
    """ONNX initial_h/initial_c [dirs, batch, H] -> MIL [batch, dirs*H] (zeros when absent)."""
    mb = _mb()
    if not c.has(i):
        batch = c.shape(0)[1]
        if not isinstance(batch, (int, np.integer)):
            raise c.unsupported("a missing initial state with a dynamic batch dim")
        return np.zeros((int(batch), dirs * hidden), np.float32)
    state = c.var(i)
    if dirs == 2:
        state = mb.concat(values=list(mb.split(x=state, num_splits=2, axis=0)), axis=2)
    return mb.squeeze(x=state, axes=[0])


def _lstm_split_dirs(x, dirs: int, axis: int):
    """MIL [..., dirs*H] -> ONNX layout with a new directions axis at ``axis``."""
    mb = _mb()
    if dirs == 1:
        return mb.expand_dims(x=x, axes=[axis])
    return mb.stack(values=list(mb.split(x=x, num_splits=2, axis=-1)), axis=axis)


@_op("LSTM")
def _lstm(c: _Ctx):
    """ONNX LSTM (layout 0) -> MIL ``lstm``: gates reordered iofc -> ifoz, bias Wb + Rb, states [batch, dirs*H];
    outputs Y [seq, dirs, batch, H], Y_h / Y_c [dirs, batch, H]."""
    mb = _mb()
    direction = _lstm_check(c)
    dirs, hidden = _LSTM_DIRS[direction], int(c.shape(2)[-1])
    if c.shape(1)[0] != dirs or c.shape(2)[0] != dirs:
        raise c.unsupported(f"W/R with {c.shape(1)[0]} directions for direction={direction!r}")
    args = _lstm_activations(c, dirs)
    for d in range(dirs):
        args.update(_lstm_weights(c, d, hidden))
    y, y_h, y_c = mb.lstm(x=c.var(0), initial_h=_lstm_state(c, 5, dirs, hidden),
                          initial_c=_lstm_state(c, 6, dirs, hidden), direction=direction, output_sequence=True,
                          **args)
    names = list(c.node.output) + [""] * 3
    return [_lstm_split_dirs(v, dirs, axis) if names[k] else v
            for k, (v, axis) in enumerate(((y, 1), (y_h, 0), (y_c, 0)))]


# ---------------------------------------------------------------------------------------------------------

def _load(model) -> Any:
    import onnx

    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise InputError(f"ONNX model {path} does not exist")
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise InputError(f"{path}: not a readable ONNX model ({exc})") from None
    return model


def check_supported(model) -> None:
    """Raise UnsupportedOpError for the first node outside the table (before any MIL is built)."""
    model = _load(model)
    for node in model.graph.node:
        if not supports(node):
            raise UnsupportedOpError(
                f"Core ML export: node {node.name or '<unnamed>'!r} has op type "
                f"{(node.domain + '.') if node.domain else ''}{node.op_type}, which the ONNX->MIL translator "
                f"does not support (supported: {len(SUPPORTED_OPS)} ops, see edgekit.converters.onnx_to_mil)")


def translate(model, input_shapes: dict[str, list[int]] | None = None, opset_version=None) -> MilTranslation:
    """Translate an ONNX model (path or ModelProto) into a MIL program with one function ``main``."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, get_new_symbol, types
    from onnx import numpy_helper

    model = _load(model)
    check_supported(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    g = model.graph
    consts = {i.name: _np_const(numpy_helper.to_array(i)) for i in g.initializer}
    input_shapes = dict(input_shapes or {})
    unknown = set(input_shapes) - {i.name for i in g.input}
    if unknown:
        raise InputError(f"input_shapes names unknown input(s) {sorted(unknown)}; "
                         f"the model's inputs are {[i.name for i in g.input if i.name not in consts]}")

    mil_dtype = {np.float32: types.fp32, np.float16: types.fp16, np.int32: types.int32, np.bool_: types.bool}
    specs, in_names, narrowed = {}, {}, {}
    for inp in g.input:
        if inp.name in consts:
            continue
        tt = inp.type.tensor_type
        if tt.elem_type not in _ONNX_TO_NP:
            raise UnsupportedOpError(f"Core ML export: input {inp.name!r} has ONNX data type {tt.elem_type}, "
                                     "which Core ML cannot take")
        if tt.elem_type == 7:
            narrowed[inp.name] = "int64->int32"
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if inp.name in input_shapes:
            given = [int(d) for d in input_shapes[inp.name]]
            if len(given) != len(dims) or any(d is not None and d != e for d, e in zip(dims, given)):
                raise InputError(f"input_shapes[{inp.name!r}] = {given} does not fit the model's shape {dims}")
            dims = given
        shape = [d if d is not None else get_new_symbol() for d in dims]
        name = mil_name(inp.name)
        in_names[inp.name] = name
        specs[name] = mb.placeholder(shape=shape, dtype=mil_dtype[_ONNX_TO_NP[tt.elem_type]])

    ctx = _Ctx({}, consts, opset)
    counts: dict[str, int] = {}
    node_weights: dict[str, list[str]] = {}
    initializer_names = {i.name for i in g.initializer}
    with Function(specs, opset_version) as func:
        for onnx_name, name in in_names.items():
            ctx.env[onnx_name] = func.inputs[name]
        for node in g.node:
            ctx.node = node
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            node_weights[node.name or node.output[0]] = [mil_name(i) for i in node.input if i in initializer_names]
            try:
                res = SUPPORTED_OPS[node.op_type](ctx)
            except UnsupportedOpError:
                raise
            except Exception as exc:
                raise ConversionError(f"Core ML export: node {node.name or '<unnamed>'!r} (op {node.op_type}) "
                                      f"failed to translate: {exc}") from exc
            outs = res if isinstance(res, (list, tuple)) else [res]
            for oname, val in zip(node.output, outs):
                if isinstance(val, np.ndarray):
                    consts[oname] = val
                else:
                    ctx.env[oname] = val
        outputs, out_names = [], {}
        for o in g.output:
            name = mil_name(o.name)
            if o.name not in ctx.env and o.name in consts:
                ctx.env[o.name] = mb.const(val=consts[o.name])
            if o.name not in ctx.env:
                raise ConversionError(f"Core ML export: graph output {o.name!r} is produced by no node")
            outputs.append(mb.identity(x=ctx.env[o.name], name=name))
            out_names[o.name] = name
        func.set_outputs(outputs)
    prog = Program()
    prog.add_function("main", func)
    return MilTranslation(prog, in_names, out_names, narrowed, counts, node_weights)
