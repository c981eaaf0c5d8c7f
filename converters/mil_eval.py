"""Evaluate a saved Core ML ``.mlpackage`` on Linux: reload its MIL program and run it op by op in numpy.

Core ML ``predict`` needs macOS. Elsewhere this module reloads the package through coremltools' milproto
loader (which re-runs type inference, so a corrupt or inconsistent package fails here) and walks the program:
each op's own ``value_inference()`` computes its output from concrete input values; the few ops without one
(conv, conv_transpose, pooling, batch_norm, silu, lstm, the ``constexpr_*`` decompression ops) use the small numpy
fallbacks below.
fp16 programs compute in float16 numpy, so the result tracks the precision of the package. This is a
*graph check* of the program, not a run on a device: it does not exercise the Core ML runtime or its kernels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit.errors import ConversionError, InputError, ModelLoadError

#: key in the package's user-defined metadata holding edgekit's naming/dtype facts (JSON)
META_KEY = "com.edgekit.io"


def _pads(op, x_spatial: tuple[int, ...], kernel: list[int], strides: list[int], dil: list[int]) -> list[tuple]:
    """(begin, end) padding per spatial dim for MIL's pad_type / pad arguments."""
    pad_type = op.pad_type.val if op.pad_type is not None else "valid"
    n = len(kernel)
    if pad_type == "custom":
        p = [int(v) for v in op.pad.val]
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    if pad_type == "valid":
        return [(0, 0)] * n
    out = []
    for i in range(n):
        eff = (kernel[i] - 1) * dil[i] + 1
        o = -(-x_spatial[i] // strides[i])
        total = max((o - 1) * strides[i] + eff - x_spatial[i], 0)
        small, big = total // 2, total - total // 2
        out.append((big, small) if pad_type == "same_lower" else (small, big))
    return out


def _windows(x: np.ndarray, kernel, strides, dil, ceil_mode: bool = False, fill: float = 0.0) -> np.ndarray:
    """Sliding windows of a padded [N, C, *spatial] array: [N, C, *out, *kernel]."""
    n = len(kernel)
    if ceil_mode:  # extra end padding so the last partial window is kept
        extra = []
        for i in range(n):
            eff = (kernel[i] - 1) * dil[i] + 1
            size = x.shape[2 + i]
            o = -(-(size - eff) // strides[i]) + 1
            extra.append(max((o - 1) * strides[i] + eff - size, 0))
        x = np.pad(x, [(0, 0), (0, 0)] + [(0, e) for e in extra], constant_values=fill)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    win = np.lib.stride_tricks.sliding_window_view(x, eff, axis=tuple(range(2, 2 + n)))
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(
        slice(None, None, d) for d in dil)
    return win[sl]


def _conv(op) -> np.ndarray:
    x, w = op.x.val, op.weight.val
    n = w.ndim - 2
    strides = list(op.strides.val) if op.strides is not None else [1] * n
    dil = list(op.dilations.val) if op.dilations is not None else [1] * n
    groups = int(op.groups.val) if op.groups is not None else 1
    pads = _pads(op, x.shape[2:], list(w.shape[2:]), strides, dil)
    acc = np.float32 if x.dtype == np.float16 else x.dtype
    N, cin = x.shape[:2]
    cout = w.shape[0]
    if groups == 1 and all(k == 1 for k in w.shape[2:]) and all(s == 1 for s in strides) and \
            not any(a or b for a, b in pads):            # pointwise: one matrix product
        y = np.matmul(w.astype(acc).reshape(cout, cin), x.astype(acc).reshape(N, cin, -1))
        y = y.reshape((N, cout) + x.shape[2:])
    else:
        xp = np.pad(x.astype(acc), [(0, 0), (0, 0)] + pads)
        win = _windows(xp, list(w.shape[2:]), strides, dil)        # [N, Cin, *out, *k]
        cg, og = cin // groups, cout // groups
        letters = "defgh"[:n]
        # all groups in one contraction (depthwise convs have hundreds): [N, G, cg, *out, *k] x [G, og, cg, *k]
        xg = win.reshape((N, groups, cg) + win.shape[2:])
        wg = w.astype(acc).reshape((groups, og, cg) + w.shape[2:])
        spec = f"nac{letters.upper()}{letters},aoc{letters}->nao{letters.upper()}"
        y = np.einsum(spec, xg, wg, optimize=True).reshape((N, cout) + win.shape[2:2 + n])
    if op.bias is not None:
        y = y + op.bias.val.astype(acc).reshape((1, cout) + (1,) * n)
    return y.astype(x.dtype)


def _conv_transpose(op) -> np.ndarray:
    """Transposed conv: every input pixel scatters ``x * w[:, :, k]`` to ``i * stride + k * dilation``; the full
    result is cropped by ``pad`` (custom/valid) and sized to ``output_shape`` where given."""
    import itertools

    x, w = op.x.val, op.weight.val
    n = w.ndim - 2
    strides = [int(v) for v in op.strides.val] if op.strides is not None else [1] * n
    dil = [int(v) for v in op.dilations.val] if op.dilations is not None else [1] * n
    groups = int(op.groups.val) if op.groups is not None else 1
    pad_type = op.pad_type.val if op.pad_type is not None else "valid"
    if pad_type not in ("custom", "valid"):
        raise ConversionError(f"graph check: conv_transpose {op.name!r} with pad_type {pad_type!r}")
    pads = _pads(op, x.shape[2:], list(w.shape[2:]), strides, dil)
    acc = np.float32 if x.dtype == np.float16 else x.dtype
    N, cin = x.shape[:2]
    cg, og = cin // groups, w.shape[1]
    full = [(x.shape[2 + i] - 1) * strides[i] + (w.shape[2 + i] - 1) * dil[i] + 1 for i in range(n)]
    y = np.zeros((N, groups, og, *full), acc)
    xg = x.astype(acc).reshape((N, groups, cg) + x.shape[2:])
    wg = w.astype(acc).reshape((groups, cg, og) + w.shape[2:])
    for k in itertools.product(*(range(d) for d in w.shape[2:])):
        contrib = np.einsum("ngc...,gco->ngo...", xg, wg[(slice(None),) * 3 + k])
        sl = tuple(slice(k[i] * dil[i], k[i] * dil[i] + (x.shape[2 + i] - 1) * strides[i] + 1, strides[i])
                   for i in range(n))
        y[(slice(None),) * 3 + sl] += contrib
    y = y.reshape((N, groups * og, *full))
    want = [int(v) for v in op.output_shape.val][2:] if op.output_shape is not None else \
        [full[i] - pads[i][0] - pads[i][1] for i in range(n)]
    y = np.pad(y, [(0, 0), (0, 0)] + [(0, max(0, pads[i][0] + want[i] - full[i])) for i in range(n)])
    y = y[(slice(None), slice(None)) + tuple(slice(pads[i][0], pads[i][0] + want[i]) for i in range(n))]
    if op.bias is not None:
        y = y + op.bias.val.astype(acc).reshape((1, -1) + (1,) * n)
    return y.astype(x.dtype)


def _pool(op, reduce: str) -> np.ndarray:
    x = op.x.val
    kernel = [int(k) for k in op.kernel_sizes.val]
    n = len(kernel)
    strides = [int(s) for s in op.strides.val] if op.strides is not None else [1] * n
    pads = _pads(op, x.shape[2:], kernel, strides, [1] * n)
    ceil = bool(op.ceil_mode.val) if op.ceil_mode is not None else False
    axes = tuple(range(-n, 0))
    if reduce == "max":
        xp = np.pad(x, [(0, 0), (0, 0)] + pads, constant_values=-np.inf)
        return _windows(xp, kernel, strides, [1] * n, ceil, -np.inf).max(axis=axes).astype(x.dtype)
    acc = x.astype(np.float32)
    xp = np.pad(acc, [(0, 0), (0, 0)] + pads)
    ones = np.pad(np.ones((1, 1) + x.shape[2:], np.float32), [(0, 0), (0, 0)] + pads)
    total = _windows(xp, kernel, strides, [1] * n, ceil).sum(axis=axes)
    exclude = op.exclude_padding_from_average is not None and bool(op.exclude_padding_from_average.val)
    if exclude:
        count = _windows(ones, kernel, strides, [1] * n, ceil).sum(axis=axes)
    else:
        full = np.pad(np.ones((1, 1) + x.shape[2:], np.float32), [(0, 0), (0, 0)] + pads, constant_values=1.0)
        count = _windows(full, kernel, strides, [1] * n, ceil).sum(axis=axes)
    return (total / count).astype(x.dtype)


def _batch_norm(op) -> np.ndarray:
    x = op.x.val
    shape = (1, -1) + (1,) * (x.ndim - 2)
    eps = float(op.epsilon.val) if op.epsilon is not None else 1e-5
    y = (x - op.mean.val.reshape(shape)) / np.sqrt(op.variance.val.reshape(shape) + np.asarray(eps, x.dtype))
    if op.gamma is not None:
        y = y * op.gamma.val.reshape(shape)
    if op.beta is not None:
        y = y + op.beta.val.reshape(shape)
    return y.astype(x.dtype)


def _upsample_nearest(op) -> np.ndarray:
    x = op.x.val
    return np.repeat(np.repeat(x, int(op.scale_factor_height.val), axis=-2), int(op.scale_factor_width.val), axis=-1)


def _silu(op) -> np.ndarray:
    x = op.x.val
    return (x / (1 + np.exp(-x))).astype(x.dtype)


_RNN_ACTS: dict[str, Callable] = {
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "tanh": np.tanh, "scaled_tanh": np.tanh,  # default alpha=beta=1
    "relu": lambda x: np.maximum(x, 0), "linear": lambda x: x,
    "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0, 1),
}


def _attr(op, name: str, default):
    """The constant value of an optional MIL op input, or ``default``."""
    v = getattr(op, name)
    return default if v is None else v.val


def _lstm_direction(op, x: np.ndarray, h: np.ndarray, c: np.ndarray, back: bool) -> tuple:
    """One direction of MIL ``lstm`` (gates i, f, o, z; peepholes i, f on c_{t-1}, o on c_t; ``clip`` on the
    cell state): hidden states per input step [seq, batch, H] and the final h, c. Products accumulate in
    float32 and states are rounded to ``x``'s dtype every step (fp16 programs keep fp16 state)."""
    sfx = "_back" if back else ""
    dt, acc = x.dtype, np.float32 if x.dtype == np.float16 else x.dtype
    w_ih, w_hh = (getattr(op, f"weight_{k}{sfx}").val.astype(acc) for k in ("ih", "hh"))
    hid = w_hh.shape[1]
    bias, peep = getattr(op, f"bias{sfx}"), getattr(op, f"peephole{sfx}")
    b = bias.val.astype(acc) if bias is not None else np.zeros(4 * hid, acc)
    p = peep.val.astype(acc).reshape(3, hid) if peep is not None else np.zeros((3, hid), acc)
    f_act, g_act, h_act = (_RNN_ACTS[_attr(op, k, d).lower()] for k, d in
                           (("recurrent_activation", "sigmoid"), ("cell_activation", "tanh"), ("activation", "tanh")))
    clip = float(op.clip.val) if op.clip is not None else None
    reverse = back or _attr(op, "direction", "forward") == "reverse"
    xw = x.astype(acc) @ w_ih.T + b                                    # [seq, batch, 4H]
    ys = np.zeros(x.shape[:2] + (hid,), dt)
    for t in (range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])):
        gi, gf, go, gz = np.split(xw[t] + h.astype(acc) @ w_hh.T, 4, axis=-1)
        cp = c.astype(acc)
        i, f, z = f_act(gi + p[0] * cp), f_act(gf + p[1] * cp), g_act(gz)
        cn = f * cp + i * z
        if clip is not None:
            cn = np.clip(cn, -clip, clip)
        c = cn.astype(dt)
        h = (f_act(go + p[2] * c.astype(acc)) * h_act(c.astype(acc))).astype(dt)
        ys[t] = h
    return ys, h, c


def _lstm(op) -> tuple:
    """MIL ``lstm`` (its documented equations): Y [seq or 1, batch, dirs*H], final h and c [batch, dirs*H];
    a bidirectional op runs ``*_back`` over the reversed sequence, both halves aligned to input steps."""
    x = op.x.val
    dirs = 2 if _attr(op, "direction", "forward") == "bidirectional" else 1
    hs, cs = np.split(op.initial_h.val, dirs, axis=-1), np.split(op.initial_c.val, dirs, axis=-1)
    runs = [_lstm_direction(op, x, hs[d], cs[d], back=d == 1) for d in range(dirs)]
    y, h, c = (np.concatenate([r[k] for r in runs], axis=-1) for k in range(3))
    if not _attr(op, "output_sequence", False):
        y = h[None]
    return y, h, c


def _reduce(fn: Callable) -> Callable:
    # coremltools' reduce value_inference passes keep_dims as numpy.bool, which numpy 2 rejects
    def run(op) -> np.ndarray:
        x = op.x.val
        axes = tuple(int(a) for a in op.axes.val) if op.axes is not None else None
        keep = bool(op.keep_dims.val) if op.keep_dims is not None else False
        return np.asarray(fn(x, axis=axes, keepdims=keep)).astype(x.dtype)
    return run


#: numpy implementations used instead of value_inference(): ops without one, or with one broken under numpy 2
FALLBACKS: dict[str, Callable] = {
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "avg_pool": lambda op: _pool(op, "avg"),
    "max_pool": lambda op: _pool(op, "max"),
    "batch_norm": _batch_norm,
    "silu": _silu,
    "upsample_nearest_neighbor": _upsample_nearest,
    "lstm": _lstm,
}


def load_program(path: str | Path):
    """Reload a saved .mlpackage as a MIL program (re-running type inference); ModelLoadError if it fails."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"Core ML package {path} does not exist")
    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read Core ML spec: {str(exc).splitlines()[0]}") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise ModelLoadError(f"{path}: not an ML Program (type {spec.WhichOneof('Type')}); cannot graph-check it")
    weights = path / "Data" / "com.apple.CoreML" / "weights"
    try:
        prog = milproto_load(spec, spec.specificationVersion, file_weights_dir=str(weights))
    except Exception as exc:
        raise ModelLoadError(f"{path}: the MIL program does not reload ({type(exc).__name__}: {exc})") from None
    return prog, spec


def io_metadata(spec) -> dict:
    """edgekit's I/O facts recorded in a package (ONNX names, narrowed dtypes), or {}."""
    raw = spec.description.metadata.userDefined.get(META_KEY)
    return json.loads(raw) if raw else {}


def _set(var, value: np.ndarray) -> None:
    from coremltools.converters.mil.mil import types

    value = np.asarray(value)
    if types.is_tensor(var.sym_type) or value.ndim > 0:
        t = types.tensor(types.numpy_type_to_builtin_type(value.dtype), value.shape)
    else:
        t = types.numpy_type_to_builtin_type(value.dtype)
    var._sym_type = t
    bv = t()
    bv.val = value
    var._sym_val = bv


def _eval_op(op) -> None:
    if op.op_type == "const":
        return
    if op.op_type.startswith("constexpr_"):
        vals = op.materialized_val_inference()
        vals = vals if isinstance(vals, tuple) else (vals,)
        for v, val in zip(op.outputs, vals):
            _set(v, val)
        return
    fb = FALLBACKS.get(op.op_type)
    try:
        if fb is not None:
            res = fb(op)                          # one array, or a tuple for multi-output ops (lstm)
            for v, val in zip(op.outputs, res if isinstance(res, tuple) else (res,)):
                _set(v, val)
            return
        op.type_value_inference(overwrite_output=True)
    except Exception as exc:
        raise ConversionError(f"graph check: op {op.name!r} ({op.op_type}) failed: {exc}") from exc
    if not all(o.val is not None for o in op.outputs):
        raise ConversionError(f"graph check: MIL op {op.op_type!r} ({op.name}) has no numpy evaluation")


def evaluate_program(prog, feeds: dict[str, np.ndarray], function: str = "main") -> dict[str, np.ndarray]:
    """Run ``prog``'s function on ``feeds`` (keyed by MIL input name) and return its outputs by name."""
    from coremltools.converters.mil.mil import types

    func = prog.functions[function]
    missing = set(func.inputs) - set(feeds)
    if missing:
        raise InputError(f"missing input(s) {sorted(missing)}; the program takes {sorted(func.inputs)}")
    for name, var in func.inputs.items():
        want = types.nptype_from_builtin(var.dtype)
        arr = np.asarray(feeds[name])
        if np.dtype(want).kind in "iu" and arr.dtype.kind in "iu":
            info = np.iinfo(want)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise InputError(f"input {name!r} has values outside {np.dtype(want).name} (Core ML narrows int64)")
        if len(arr.shape) != len(var.shape):
            raise InputError(f"input {name!r}: expected rank {len(var.shape)} {var.shape}, got shape {arr.shape}")
        _set(var, arr.astype(want))
    with func:  # some ops' type inference builds helper ops and needs a current block
        for op in list(func.operations):
            _eval_op(op)
    return {v.name: np.asarray(v.val) for v in func.outputs}


_CACHE: dict[tuple, tuple] = {}


def _cached_program(path: Path):
    """load_program, reused while the package's files are unchanged (validation evaluates many feeds)."""
    path = Path(path)
    files = [path / "Manifest.json", *sorted((path / "Data").rglob("*"))] if path.is_dir() else []
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())
    key = (str(path.resolve()), stamp)
    if not stamp or key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_program(path)
    return _CACHE[key]


def evaluate(path: str | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Graph-check evaluation of a saved .mlpackage; feeds/outputs may use ONNX or Core ML names."""
    prog, spec = _cached_program(Path(path))
    meta = io_metadata(spec)
    in_map = meta.get("inputs", {})             # ONNX name -> Core ML name
    out_map = meta.get("outputs", {})
    mil_feeds = {in_map.get(k, k): v for k, v in feeds.items()}
    res = evaluate_program(prog, mil_feeds)
    inverse = {v: k for k, v in out_map.items()}
    out = {}
    for o in spec.description.output:
        val = res[o.name]
        out[inverse.get(o.name, o.name)] = val.astype(np.float32) if val.dtype == np.float16 else val
    return out
