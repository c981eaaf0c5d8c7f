"""Prune ONNX weights: unstructured magnitude, N:M (2:4), and structured channel pruning of Conv/Gemm.

Channel pruning removes whole output channels of a Conv (lowest L1 norm) and the matching slices downstream
(BatchNormalization, depthwise Conv, activations, the next Conv's or Gemm's inputs), so the model really gets
smaller and faster. With calibration data (``grams=``, from :func:`calibration_grams`) the next pointwise
Conv or Gemm is not just cut but re-fitted: least squares on the kept input channels reproduces its original
output (He et al., "Channel Pruning for Accelerating Very Deep Neural Networks", 2017), with the mean of the
removed channels moved into its bias, and the channels kept are chosen on that layer (Optimal Brain Surgeon on
its inputs' covariance: the channel whose loss the others can best make up for goes first, instead of the head's
smallest L1 norm); and magnitude / N:M pruning of pointwise Conv, Gemm and MatMul weights
becomes SparseGPT (Frantar & Alistarh, 2023): the mask weighs magnitude by the input's energy and the weights
left are updated to make up for the ones removed (held-out output error of EfficientNet-Lite0's expand convs
-30 to -45%). Layers so treated are listed in ``refit``. ``skip`` names layers (node names, an unnamed node
by its first output; channel groups by their head Conv) left unpruned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.errors import InputError

_UNARY = {"Relu", "Clip", "Sigmoid", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu", "Tanh", "Softplus",
          "Identity", "Erf", "Gelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Dropout"}
_BINARY = {"Mul", "Add", "Sub", "Div"}


@dataclass(frozen=True)
class PruneSpec:
    """``kind``: "magnitude" (``amount`` = sparsity), "nm" (``n`` of every ``m`` zero), "channels" (``amount``)."""

    kind: str
    amount: float = 0.0
    n: int = 2
    m: int = 4

    @property
    def label(self) -> str:
        if self.kind == "nm":
            return f"{self.n}of{self.m}"
        if self.kind == "channels":
            return f"ch{round(self.amount * 100)}"
        return f"sparse{round(self.amount * 100)}"

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        return f"channels:{self.amount:g}" if self.kind == "channels" else f"{self.amount:g}"


def parse_prune(spec) -> PruneSpec:
    """``0.5`` (magnitude sparsity), ``2:4`` (N:M), ``channels:0.3`` (structured)."""
    if isinstance(spec, PruneSpec):
        return spec
    text = str(spec).strip()
    hint = "expected a sparsity like 0.5, an N:M pattern like 2:4, or channels:RATIO like channels:0.3"
    if m := re.fullmatch(r"channels:([0-9.]+)", text):
        r = _ratio(m.group(1), text, hint)
        return PruneSpec("channels", r)
    if m := re.fullmatch(r"(\d+):(\d+)", text):
        n, mm = int(m.group(1)), int(m.group(2))
        if not 0 < n < mm:
            raise InputError(f"--prune {text!r}: N:M needs 0 < N < M; {hint}")
        return PruneSpec("nm", n=n, m=mm)
    return PruneSpec("magnitude", _ratio(text, text, hint))


def _ratio(s: str, text: str, hint: str) -> float:
    try:
        r = float(s)
    except ValueError:
        raise InputError(f"--prune {text!r}: not a pruning spec; {hint}") from None
    if not 0.0 < r < 1.0:
        raise InputError(f"--prune {text!r}: the ratio must be between 0 and 1 (exclusive); {hint}")
    return r


@dataclass
class PruneResult:
    model: onnx.ModelProto
    layers: list[str] = field(default_factory=list)      # what was pruned
    params_before: int = 0
    params_after: int = 0       # parameters left (structured) / non-zero parameters (unstructured)
    refit: list[str] = field(default_factory=list)       # layers re-fitted on calibration data


def _inits(model) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _uses(model) -> dict[str, int]:
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    return uses


def _set(model, inits, name: str, arr: np.ndarray) -> None:
    inits[name].CopyFrom(numpy_helper.from_array(arr.astype(numpy_helper.to_array(inits[name]).dtype), name))


def _weighted(model) -> list[tuple[onnx.NodeProto, str, int]]:
    """(node, weight name, reduction axis of the 2-D view) of Conv/Gemm/MatMul nodes with initializer weights."""
    inits = _inits(model)
    out = []
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits:
            w = inits[n.input[1]]
            if len(w.dims) < 2 or w.data_type != onnx.TensorProto.FLOAT:
                continue
            if n.op_type == "Gemm":
                trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
                out.append((n, n.input[1], 1 if trans_b else 0))
            elif n.op_type == "MatMul":
                out.append((n, n.input[1], len(w.dims) - 2))
            else:
                out.append((n, n.input[1], 1))
    return out


def candidates(model: onnx.ModelProto, spec: PruneSpec) -> list[str]:
    """Names of the layers ``prune`` would touch (for the accuracy-aware retry)."""
    if spec.kind == "channels":
        return [h for h, _ in _channel_groups(model)]
    return [_key(n) for n, _, _ in _weighted(model)]


def prune(model: onnx.ModelProto, spec, skip: Iterable[str] = (),
          grams: dict[str, np.ndarray] | None = None, cache: dict | None = None) -> PruneResult:
    """A pruned copy of ``model``; ``grams``: :func:`calibration_grams` of ``model`` for ``spec``. ``cache``: a
    dict kept across calls on the same model and spec (the accuracy retry) holding each layer's SparseGPT
    result and each channel group's choice, which do not depend on what else is skipped."""
    spec = parse_prune(spec)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    skip = set(skip)
    before = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    if spec.kind == "channels":
        res = _prune_channels(m, spec.amount, skip, grams or {}, {} if cache is None else cache)
    else:
        res = _prune_weights(m, spec, skip, grams or {}, {} if cache is None else cache)
    res.params_before = before
    return res


def _prune_weights(model, spec: PruneSpec, skip: set[str], grams: dict[str, np.ndarray], cache: dict
                   ) -> PruneResult:
    inits, uses = _inits(model), _uses(model)
    done, refit = [], []
    for node, wname, axis in _weighted(model):
        if _key(node) in skip or uses.get(wname, 0) != 1:
            continue
        w = numpy_helper.to_array(inits[wname]).astype(np.float32)
        key = (wname, str(spec))
        if key not in cache:
            cache[key] = _obs_weights(node, w, axis, spec, grams.get(node.input[0])) if _obs_ok(node, inits) \
                else None
        obs = cache[key]
        if obs is not None:
            w = obs
            refit.append(_key(node))
        elif spec.kind == "magnitude":
            k = int(w.size * spec.amount)
            if k == 0:
                continue
            flat = np.abs(w).ravel()
            idx = np.argpartition(flat, k - 1)[:k]
            w = w.ravel().copy()
            w[idx] = 0.0
            w = w.reshape(numpy_helper.to_array(inits[wname]).shape)
        else:
            w2 = np.moveaxis(w, axis, -1)                 # reduction axis last
            if w2.shape[-1] % spec.m:
                continue
            g = w2.reshape(-1, spec.m).copy()
            drop = np.argsort(np.abs(g), axis=1)[:, :spec.n]
            np.put_along_axis(g, drop, 0.0, axis=1)
            w = np.moveaxis(g.reshape(w2.shape), -1, axis)
        _set(model, inits, wname, w)
        done.append(_key(node))
    nonzero = sum(int(np.count_nonzero(numpy_helper.to_array(t))) for t in model.graph.initializer)
    return PruneResult(model, done, 0, nonzero, refit)


def _obs_weights(node, w: np.ndarray, axis: int, spec: PruneSpec, gram: np.ndarray | None) -> np.ndarray | None:
    """``w`` pruned by SparseGPT against the layer input's statistics (None without them, or when the N:M
    groups do not tile the inputs)."""
    from .qtune import obs_prune

    moved = np.moveaxis(w, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    if gram is None or gram.shape[0] != rows.shape[1] + 1 or (spec.kind == "nm" and rows.shape[1] % spec.m):
        return None
    try:
        out = obs_prune(rows, gram[:-1, :-1], amount=spec.amount if spec.kind == "magnitude" else None,
                        nm=(spec.n, spec.m) if spec.kind == "nm" else None)
    except np.linalg.LinAlgError:
        return None
    return np.moveaxis(out.reshape(moved.shape), -1, axis).astype(np.float32)


# ---------------------------------------------------------------- structured channel pruning

def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _channel_groups(model) -> list[tuple[str, list[tuple]]]:
    """(head Conv's :func:`_key`, actions) for every Conv whose output channels can be removed end to end."""
    inits, uses = _inits(model), _uses(model)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    producer = {}
    for n in model.graph.node:
        for i, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, i))
        for t in n.output:
            producer[t] = n
    outputs = {o.name for o in model.graph.output}
    groups = []
    for head in model.graph.node:
        axis = _head_axis(head, inits)
        if axis is None or uses.get(head.input[1], 0) != 1 or (
                len(head.input) > 2 and head.input[2] and (head.input[2] not in inits or
                                                           uses.get(head.input[2], 0) != 1)):
            continue
        c = int(inits[head.input[1]].dims[axis])
        if c < 2:
            continue
        actions = _trace(head, c, consumers, producer, inits, uses, outputs)
        if actions is not None:
            groups.append((_key(head), actions))
    return groups


def _head_axis(node, inits) -> int | None:
    """The output-channel axis of a prunable layer's weight (None: not a head)."""
    if len(node.input) < 2 or node.input[1] not in inits or len(inits[node.input[1]].dims) != (
            4 if node.op_type == "Conv" else 2):
        return None
    if node.op_type == "Conv":
        return 0 if _attr(node, "group", 1) == 1 else None
    if node.op_type == "Gemm":
        return None if _attr(node, "transA", 0) else (0 if _attr(node, "transB", 0) else 1)
    if node.op_type == "MatMul":
        return 1
    return None


def _key(node) -> str:
    """A node's identity while tracing: its name, or its first output for an unnamed node."""
    return node.name or node.output[0]


def _trace(head, c, consumers, producer, inits, uses, outputs):
    actions = [("head", head, _head_axis(head, inits))]
    group_tensors = {head.output[0]}
    work = [head.output[0]]
    binaries = {}
    seen_nodes = {_key(head)}
    while work:
        t = work.pop()
        if t in outputs or not consumers.get(t):
            return None
        for node, idx in consumers[t]:
            op = node.op_type
            if op in _BINARY:
                binaries[_key(node)] = node
                if _key(node) not in seen_nodes:
                    seen_nodes.add(_key(node))
                    group_tensors.add(node.output[0])
                    work.append(node.output[0])
                continue
            if _key(node) in seen_nodes:
                continue
            seen_nodes.add(_key(node))
            if op in _UNARY and idx == 0:
                if op == "Clip" or all(i in inits or not i for i in node.input[1:]):
                    group_tensors.add(node.output[0])
                    work.append(node.output[0])
                    continue
                return None
            if op == "BatchNormalization" and idx == 0:
                if any(p not in inits or uses.get(p, 0) != 1 for p in node.input[1:5]):
                    return None
                actions.append(("bn", node))
                group_tensors.add(node.output[0])
                work.append(node.output[0])
                continue
            if op == "Conv" and idx == 0 and len(node.input) > 1 and node.input[1] in inits \
                    and uses.get(node.input[1], 0) == 1:
                g = _attr(node, "group", 1)
                w = inits[node.input[1]]
                if g == 1 and w.dims[1] == c:
                    actions.append(("conv_in", node))
                    continue
                if g == c and w.dims[0] == c and w.dims[1] == 1:
                    if len(node.input) > 2 and node.input[2] and (node.input[2] not in inits or
                                                                   uses.get(node.input[2], 0) != 1):
                        return None
                    actions.append(("dw", node))
                    group_tensors.add(node.output[0])
                    work.append(node.output[0])
                    continue
                return None
            if head.op_type != "Conv" and op in ("Gemm", "MatMul") and idx == 0 and node.input[1] in inits \
                    and uses.get(node.input[1], 0) == 1 and len(inits[node.input[1]].dims) == 2 \
                    and not _attr(node, "transA", 0):
                axis = 1 if (op == "Gemm" and _attr(node, "transB", 0)) else 0
                if inits[node.input[1]].dims[axis] != c:
                    return None
                actions.append(("fc_in", node, axis))
                continue
            if op == "Flatten" and idx == 0 and producer.get(t) is not None and \
                    producer[t].op_type in ("GlobalAveragePool", "GlobalMaxPool"):
                nxt = consumers.get(node.output[0], [])
                if len(nxt) != 1 or node.output[0] in outputs:
                    return None
                g, gi = nxt[0]
                if g.op_type in ("Gemm", "MatMul") and gi == 0 and g.input[1] in inits and uses.get(g.input[1]) == 1:
                    axis = 1 if (g.op_type == "Gemm" and _attr(g, "transB", 0)) else 0
                    seen_nodes.add(_key(g))
                    actions.append(("fc_in", g, axis))
                    continue
                return None
            return None
    for node in binaries.values():
        for i in node.input:
            if i in group_tensors:
                continue
            if i in inits and int(np.prod(inits[i].dims)) == 1:
                continue
            dims = list(inits[i].dims) if i in inits else []
            if i in inits and uses.get(i, 0) == 1 and dims.count(c) == 1 and int(np.prod(dims)) == c:
                actions.append(("const", i, dims.index(c)))    # a per-channel bias or scale
                continue
            return None          # a residual Add or a tensor from outside the group
    return actions


def calibration_grams(model: onnx.ModelProto, spec, feeds, max_samples: int = 32) -> dict[str, np.ndarray]:
    """``E[[x, 1][x, 1]^T]`` on ``feeds`` of the inputs ``prune(model, spec, grams=...)`` uses: for channel
    pruning those of the pointwise Conv / Gemm / MatMul layers it re-fits, for magnitude and N:M those of the
    layers it prunes with SparseGPT's update. Computed once per source model."""
    from .qtune import input_grams

    spec = parse_prune(spec)
    inits = _inits(model)
    if spec.kind == "channels":
        layers = [a[1] for _, acts in _channel_groups(model) for a in acts
                  if a[0] == "fc_in" or (a[0] == "conv_in" and _pointwise(a[1], inits))]
    else:
        layers = [n for n, _, _ in _weighted(model) if _obs_ok(n, inits)]
    names = sorted({n.input[0] for n in layers})
    last = {n.input[0] for n in layers if n.op_type == "MatMul"}        # features on the last axis
    return input_grams(model, names, feeds, max_samples, ones=True, last=last) if names else {}


def _obs_ok(node, inits) -> bool:
    """A layer whose weight is one [outputs, inputs] matrix on its input's channels (SparseGPT applies)."""
    if node.op_type == "Conv":
        return _pointwise(node, inits)
    return len(inits[node.input[1]].dims) == 2 and not (node.op_type == "Gemm" and _attr(node, "transA", 0))


def _pointwise(node, inits) -> bool:
    return tuple(inits[node.input[1]].dims[2:]) == (1, 1) and _attr(node, "group", 1) == 1 and \
        all(v == 1 for v in _attr(node, "strides", [1, 1])) and not any(_attr(node, "pads", [0]))


def _refit(model, inits, node, keep: np.ndarray, axis: int, grams: dict[str, np.ndarray]) -> bool:
    """Set ``node``'s weight on the kept input channels ``keep`` (and its bias) to the least-squares fit of its
    original output; False where it cannot be (no statistics, not pointwise): the caller just cuts."""
    g = grams.get(node.input[0])
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    c = w.shape[axis]
    if g is None or g.shape[0] != c + 1 or (node.op_type == "Conv" and not _pointwise(node, inits)) or \
            (node.op_type == "Gemm" and (_attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0)):
        return False
    rows = np.moveaxis(w, axis, -1).reshape(-1, c)                      # [out, in]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and (bias not in inits or int(np.prod(inits[bias].dims)) != len(rows)):
        return False
    intercept = node.op_type != "MatMul"
    b = numpy_helper.to_array(inits[bias]).astype(np.float64).reshape(-1) if bias else np.zeros(len(rows))
    idx = np.append(keep, c) if intercept else np.asarray(keep)
    a = g[np.ix_(idx, idx)]
    a = a + np.eye(len(idx)) * 1e-6 * float(np.trace(a)) / len(idx)
    try:
        theta = np.linalg.solve(a, g[idx] @ np.vstack([rows.T, b[None, :]]))      # [kept (+1), out]
    except np.linalg.LinAlgError:
        return False
    new_rows = theta[:len(keep)].T
    if node.op_type == "Conv":
        new_w = new_rows.reshape(len(rows), len(keep), 1, 1)
    else:
        new_w = new_rows if axis == 1 else new_rows.T
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(new_w.astype(np.float32), node.input[1]))
    if intercept:
        if bias is not None and _uses(model).get(bias, 0) != 1:      # shared with other nodes: this one's own
            bias = None
        if bias is None:
            bias = f"{node.input[1]}_refit_bias"
            model.graph.initializer.append(numpy_helper.from_array(theta[-1].astype(np.float32), bias))
            inits[bias] = model.graph.initializer[-1]
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = bias
        else:
            _set(model, inits, bias, theta[-1].reshape(inits[bias].dims))
    return True


def _obs_keep(model, inits, head: str, actions, c: int, n_keep: int, grams: dict[str, np.ndarray],
              cache: dict) -> np.ndarray | None:
    """The ``n_keep`` channels of a group to keep, chosen on its one re-fittable consumer: greedily drop the
    input channel whose removal, with the other weights compensating (Optimal Brain Surgeon on the inputs'
    covariance), costs the consumer's output least. None where that does not apply (no statistics, or other
    consumers the channels also feed)."""
    cons = [a for a in actions if a[0] in ("conv_in", "fc_in")]
    if len(cons) != 1:
        return None
    node = cons[0][1]
    g = grams.get(node.input[0])
    if g is None or g.shape[0] != c + 1 or (node.op_type == "Conv" and not _pointwise(node, inits)):
        return None
    key = ("keep", head, n_keep)
    if key not in cache:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        axis = 1 if cons[0][0] == "conv_in" else cons[0][2]
        rows = np.moveaxis(w, axis, -1).reshape(-1, c)                  # [out, in]
        mu = g[:-1, -1]
        cov = g[:-1, :-1] - np.outer(mu, mu) if node.op_type != "MatMul" else g[:-1, :-1]   # MatMul: no bias
        cache[key] = _greedy_obs_keep(rows, cov, n_keep)
    return cache[key]


def _greedy_obs_keep(rows: np.ndarray, h: np.ndarray, n_keep: int) -> np.ndarray:
    """Input columns of ``rows`` [out, in] to keep: repeatedly remove the one whose loss
    ``||rows[:, j]||^2 / [H^-1]_jj`` is least and update the rest (and H^-1) as Optimal Brain Surgeon does."""
    c = rows.shape[1]
    hinv = np.linalg.inv(h + np.eye(c) * (1e-6 * float(np.trace(h)) / c + 1e-12))
    w = rows.copy()
    alive = np.ones(c, bool)
    for _ in range(c - n_keep):
        d = np.diag(hinv)
        cost = np.full(c, np.inf)
        ok = alive & (d > 0)
        cost[ok] = (w[:, ok] ** 2).sum(0) / d[ok]
        j = int(np.argmin(cost)) if ok.any() else int(np.flatnonzero(alive)[0])
        alive[j] = False
        if hinv[j, j] > 0:
            w -= np.outer(w[:, j] / hinv[j, j], hinv[j])
            hinv = hinv - np.outer(hinv[:, j], hinv[j]) / hinv[j, j]
        w[:, j] = 0.0
    return np.flatnonzero(alive)


def _prune_channels(model, ratio: float, skip: set[str], grams: dict[str, np.ndarray], cache: dict
                    ) -> PruneResult:
    done, refit = [], []
    for head_name, _ in _channel_groups(model):
        if head_name in skip:
            continue
        # re-trace on the current model: earlier groups changed shapes of shared downstream weights
        groups = dict(_channel_groups(model))
        if head_name not in groups:
            continue
        inits = _inits(model)
        actions = groups[head_name]
        head, hax = actions[0][1], actions[0][2]
        w = np.moveaxis(numpy_helper.to_array(inits[head.input[1]]), hax, 0)
        c = w.shape[0]
        k = int(c * ratio)
        if k == 0 or c - k < 1:
            continue
        keep = _obs_keep(model, inits, head_name, actions, c, c - k, grams, cache)
        if keep is None:                    # no statistics: the output channels of least L1 norm go
            keep = np.sort(np.argsort(np.abs(w).reshape(c, -1).sum(1))[k:])
        for act in actions:
            kind, node = act[0], act[1]
            if kind == "const":
                _take(model, inits, node, keep, act[2])
            elif kind in ("head", "dw"):
                _take(model, inits, node.input[1], keep, hax if kind == "head" else 0)
                if len(node.input) > 2 and node.input[2]:
                    _take(model, inits, node.input[2], keep, 0)
                if kind == "dw":
                    for a in node.attribute:
                        if a.name == "group":
                            a.i = len(keep)
            elif kind == "bn":
                for p in node.input[1:5]:
                    _take(model, inits, p, keep, 0)
            elif kind in ("conv_in", "fc_in"):
                axis = 1 if kind == "conv_in" else act[2]
                if _refit(model, inits, node, keep, axis, grams):
                    refit.append(_key(node))
                else:
                    _take(model, inits, node.input[1], keep, axis)
        done.append(head_name)
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shapes are re-derived by the runtime anyway
        pass
    after = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return PruneResult(model, done, 0, after, refit)


def _take(model, inits, name: str, keep: np.ndarray, axis: int) -> None:
    _set(model, inits, name, np.take(numpy_helper.to_array(inits[name]), keep, axis=axis))
