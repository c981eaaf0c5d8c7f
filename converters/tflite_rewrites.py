"""Rewrites of the ONNX copy handed to onnx2tf that work around how it (or LiteRT) handles a graph pattern.

Each rewrite keeps the model's function exactly, returns how many places it changed, and says in its docstring
which failure it prevents.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .canonical import opset_of


def edge_padded_max_pools(model: onnx.ModelProto) -> int:
    """Give each padded MaxPool (explicit ``pads`` or ``ceil_mode``) its padding as a ``Pad(mode="edge")`` in front.

    onnx2tf pads a max pool with the float type's minimum (-3.4e38) before a VALID pooling; static int8 then
    calibrates that tensor's range to about [-3.4e38, max] and every real value rounds to one level (MTCNN's O-Net:
    int8 scale 1.3e36, the output constant; LiteRT's XNNPACK refuses the graph). Edge padding gives the same
    maxima: every window that covers padding also covers the border row or column it copies (ONNX pads are smaller
    than the kernel, and the last window of ``ceil_mode`` starts inside the input). Only MaxPools with 1-dilations,
    a single output and a known NCHW input shape are rewritten.
    """
    shapes = _known_shapes(model)
    nodes, changed = [], 0
    for node in model.graph.node:
        pads = _max_pool_pads(node, shapes.get(node.input[0]) if node.input else None)
        if not pads:
            nodes.append(node)
            continue
        padded = f"{node.output[0]}_edge_padded"
        name = numpy_helper.from_array(np.array(pads, np.int64), f"{node.output[0]}_edge_pads")
        model.graph.initializer.append(name)
        nodes.append(helper.make_node("Pad", [node.input[0], name.name], [padded], mode="edge",
                                      name=f"{node.name or node.output[0]}_edge_pad"))
        keep = [a for a in node.attribute if a.name in ("kernel_shape", "strides", "storage_order")]
        nodes.append(helper.make_node("MaxPool", [padded], list(node.output), name=node.name, **{
            a.name: helper.get_attribute_value(a) for a in keep}))
        changed += 1
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return changed


def _known_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Static shapes of the graph's tensors that shape inference can tell."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_value for d in dims]
    return out


def _max_pool_pads(node: onnx.NodeProto, shape: list[int] | None) -> list[int] | None:
    """ONNX ``Pad`` pads (all dims, begins then ends) equal to ``node``'s padding incl. ceil mode; None if none."""
    if node.op_type != "MaxPool" or len(node.output) != 1 or shape is None or len(shape) < 3:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kernel = list(attrs.get("kernel_shape", []))
    n = len(kernel)
    if not kernel or n != len(shape) - 2 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
            or any(d != 1 for d in attrs.get("dilations", [1] * n)):
        return None
    strides = list(attrs.get("strides", [1] * n))
    pads = list(attrs.get("pads", [0] * 2 * n))
    begin, end = pads[:n], pads[n:]
    if attrs.get("ceil_mode", 0):
        for i in range(n):
            size = shape[2 + i] + begin[i] + end[i]
            out = -(-(size - kernel[i]) // strides[i]) + 1
            if (out - 1) * strides[i] >= shape[2 + i] + begin[i]:   # PyTorch/ONNX: the last window starts inside
                out -= 1
            end[i] += max((out - 1) * strides[i] + kernel[i] - size, 0)
    if not any(begin) and not any(end):
        return None
    return [0, 0, *begin, 0, 0, *end]


def _const(model, name: str) -> float | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            arr = numpy_helper.to_array(init)
            return float(arr) if arr.size == 1 else None
    return None


def fuse_erf_gelu(model) -> int:
    """Rewrite ``x * 0.5 * (1 + erf(x / sqrt(2)))`` chains into one ``Gelu`` node; return how many."""
    g = model.graph
    consumers: dict[str, list] = {}
    producer = {o: n for n in g.node for o in n.output}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only(name):
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 else None

    def other(node, name):
        rest = [i for i in node.input if i != name]
        return rest[0] if len(rest) == 1 else None

    fused, drop, add = 0, set(), []
    from onnx import helper

    for erf in [n for n in g.node if n.op_type == "Erf"]:
        scale = producer.get(erf.input[0])
        if scale is None or scale.op_type not in ("Div", "Mul"):
            continue
        x = scale.input[0]
        c = _const(model, scale.input[1])
        if c is None or not (abs(c - np.sqrt(2)) < 1e-3 if scale.op_type == "Div" else abs(c - 1 / np.sqrt(2)) < 1e-3):
            continue
        add1 = only(erf.output[0])
        if add1 is None or add1.op_type != "Add" or _const(model, other(add1, erf.output[0]) or "") != 1.0:
            continue
        m1 = only(add1.output[0])
        if m1 is None or m1.op_type != "Mul":
            continue
        chain = [scale, erf, add1, m1]
        partner = other(m1, add1.output[0])
        if partner == x:  # x * (1 + erf) then * 0.5
            m2 = only(m1.output[0])
            if m2 is None or m2.op_type != "Mul" or _const(model, other(m2, m1.output[0]) or "") != 0.5:
                continue
            chain.append(m2)
            out = m2.output[0]
        else:  # (0.5 * x) * (1 + erf)
            half = producer.get(partner or "")
            if half is None or half.op_type != "Mul" or x not in half.input:
                continue
            if _const(model, other(half, x) or "") != 0.5 or len(consumers.get(half.output[0], [])) != 1:
                continue
            chain.append(half)
            out = m1.output[0]
        if any(len(consumers.get(n.output[0], [])) != 1 for n in chain[:3]):
            continue
        drop.update(id(n) for n in chain)
        add.append((chain[-1], helper.make_node("Gelu", [x], [out], name=f"{erf.name or 'erf'}_gelu")))
        fused += 1
    if fused:
        keep = []
        replacement = {id(last): node for last, node in add}
        for n in g.node:
            if id(n) in replacement:
                keep.append(replacement[id(n)])
            elif id(n) not in drop:
                keep.append(n)
        del g.node[:]
        g.node.extend(keep)
    return fused


def add_kernel_shapes(model) -> int:
    """Write the optional ``kernel_shape`` of Conv/ConvTranspose nodes from their constant weights (onnx2tf reads
    the attribute to lay out the weights: without it a ConvTranspose fails with "axes don't match array")."""
    from onnx import helper

    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    added = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in dims and \
                not any(a.name == "kernel_shape" for a in node.attribute):
            node.attribute.append(helper.make_attribute("kernel_shape", dims[node.input[1]][2:]))
            added += 1
    return added


#: what TensorFlow accepts as a scope name: onnx2tf names each TF op after its ONNX node
_TF_SCOPE = re.compile(r"[^A-Za-z0-9_.\\/>-]")


def tf_safe_node_names(model) -> int:
    """Rename the nodes whose names TensorFlow refuses as scope names (Paddle2ONNX writes ``Softmax@0``:
    "'Softmax@0' is not a valid scope name") by replacing each refused character with ``_``; how many."""
    taken = {n.name for n in model.graph.node}
    renamed = 0
    for node in model.graph.node:
        if not _TF_SCOPE.search(node.name):
            continue
        base = _TF_SCOPE.sub("_", node.name)
        new, k = base, 1
        while new in taken:
            new, k = f"{base}_{k}", k + 1
        taken.add(new)
        node.name = new
        renamed += 1
    return renamed


def _constants(model) -> dict[str, np.ndarray]:
    """The graph's constant tensors by name: initializers and ``Constant`` node outputs."""
    from onnx import numpy_helper

    found = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def _slice_params(node, consts: dict) -> tuple | None:
    """(starts, ends, axes, steps) of a Slice whose parameters are all constant (input or attribute form)."""
    attrs = {a.name: list(a.ints) for a in node.attribute}
    if "starts" in attrs:   # opset < 10
        axes = attrs.get("axes", list(range(len(attrs["starts"]))))
        return attrs["starts"], attrs["ends"], axes, [1] * len(axes)
    names = list(node.input[1:]) + [""] * (4 - len(node.input[1:]))
    if any(n and n not in consts for n in names) or not names[0] or not names[1]:
        return None
    starts, ends = consts[names[0]].ravel().tolist(), consts[names[1]].ravel().tolist()
    axes = consts[names[2]].ravel().tolist() if names[2] else list(range(len(starts)))
    steps = consts[names[3]].ravel().tolist() if names[3] else [1] * len(starts)
    return starts, ends, axes, steps


def split_multi_axis_slices(model) -> int:
    """Rewrite each constant Slice over several axes as a chain of one-axis Slices (axes a no-op slice leaves
    whole are dropped); return how many Slices were rewritten.

    onnx2tf maps a Slice's axes to its channel-last layout (NCW axes [1, 2] become [2, 1]) but applies
    ``starts``/``ends`` in the listed order, so a multi-axis Slice that covers the channel axis cuts the wrong
    dims (Slice.py's re-sorting only runs for ``len(axes.shape) > 1``, never true of a 1-D axes list): silero-vad's
    STFT magnitude came out [8, 0, 257] instead of [8, 4, 129] and failed at the next Add. Unit steps are left
    out: onnxoptimizer's fuse_consecutive_slices (run by onnx2tf's onnxsim) only merges Slices given all 5 inputs.
    """
    from onnx import helper, numpy_helper

    consts, opset = _constants(model), opset_of(model)
    taken = {n.name for n in model.graph.node} | {i.name for i in model.graph.initializer}
    out, rewritten = [], 0
    for node in model.graph.node:
        params = _slice_params(node, consts) if node.op_type == "Slice" else None
        if params is None or len(params[2]) < 2:
            out.append(node)
            continue
        kept = [p for p in zip(*params) if not (p[0] == 0 and p[3] == 1 and p[1] >= 2**31 - 1)]
        src = node.input[0]
        for k, (start, end, axis, step) in enumerate(kept):
            name = _fresh(f"{node.name or 'slice'}_axis{axis}", taken)
            dst = node.output[0] if k == len(kept) - 1 else f"{name}_out"
            if opset < 10:
                out.append(helper.make_node("Slice", [src], [dst], name=name, starts=[start], ends=[end], axes=[axis]))
            else:
                parts = (("starts", start), ("ends", end), ("axes", axis)) + ((("steps", step),) if step != 1 else ())
                arrays = [np.array([v], np.int64) for _, v in parts]
                ins = [f"{name}_{part}" for part, _ in parts]
                model.graph.initializer.extend(numpy_helper.from_array(a, n) for a, n in zip(arrays, ins))
                out.append(helper.make_node("Slice", [src, *ins], [dst], name=name))
            src = dst
        if not kept:
            out.append(helper.make_node("Identity", [src], [node.output[0]], name=node.name))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(out)
    return rewritten


#: the sequence and state inputs of the recurrent ops (ONNX input positions): X, initial_h (, initial_c)
_RECURRENT_INPUTS = {"LSTM": (0, 5, 6), "GRU": (0, 5), "RNN": (0, 5)}
#: ops that pass a sequence or state along without giving it a channel layout (picking, reshaping, joining parts)
_PLUMBING = ("Gather", "Slice", "Split", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Cast", "Concat")


def recurrent_inputs(model) -> list[str]:
    """Graph inputs that reach an LSTM/GRU/RNN's sequence or initial state through plumbing ops only (silero-vad's
    ``state [2, batch, 128]`` gathered into initial_h and initial_c, its ``h``/``c [1, 1, 128]`` fed directly).

    Such a tensor is ``[directions, batch, hidden]`` (or ``[seq, batch, features]``), not a channel-first feature
    map: kept NCW, onnx2tf transposes it to [directions, hidden, batch] inside the model and its LSTM takes it as
    it is ("initial_state ... shape=(128, 1) ... cell.state_size is [128, 128]"). The worker keeps these inputs in
    their shape absolutely (onnx2tf's keep_shape_absolutely_input_names) instead.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in inits]
    todo = [n.input[i] for n in model.graph.node for i in _RECURRENT_INPUTS.get(n.op_type, ()) if i < len(n.input)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is not None and node.op_type in _PLUMBING:
            todo.extend(node.input if node.op_type == "Concat" else node.input[:1])
    return [name for name in graph_inputs if name in seen]


def _fresh(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2`` ... whichever is not in ``taken`` yet (then taken)."""
    new, k = base, 1
    while new in taken:
        new, k = f"{base}_{k}", k + 1
    taken.add(new)
    return new


def expand_reduce_l2(model: onnx.ModelProto) -> int:
    """``ReduceL2(x)`` -> ``Sqrt(ReduceSum(x * x))`` with the same axes and keepdims.

    onnx2tf turns ReduceL2 into ``tf.norm``; with the axes given as an input (opset >= 18, e.g. after the opset-20
    upgrade of an erf-GELU model) it passes a numpy integer, which tf.norm refuses ("'axis' must be None, an integer,
    or a tuple of 2 unique integers, got 1": all-MiniLM-L6-v2's normalised embedding). The expanded form uses ops
    onnx2tf converts plainly.
    """
    opset = opset_of(model)
    taken = {n.name for n in model.graph.node} | {i.name for i in model.graph.initializer}
    nodes, changed = [], 0
    for node in model.graph.node:
        if node.op_type != "ReduceL2" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        base = _fresh(node.name or node.output[0], taken)
        axes = list(node.input[1:2]) if len(node.input) > 1 and node.input[1] else []
        if "axes" in attrs and opset >= 13:      # ReduceSum takes its axes as an input from opset 13
            arr = numpy_helper.from_array(np.array(attrs["axes"], np.int64), f"{base}_axes")
            model.graph.initializer.append(arr)
            axes = [arr.name]
        extra = {"keepdims": attrs.get("keepdims", 1)}
        if opset < 13 and "axes" in attrs:
            extra["axes"] = attrs["axes"]
        if opset >= 13 and attrs.get("noop_with_empty_axes"):
            extra["noop_with_empty_axes"] = attrs["noop_with_empty_axes"]
        nodes += [helper.make_node("Mul", [node.input[0], node.input[0]], [f"{base}_sq"], name=f"{base}_sq"),
                  helper.make_node("ReduceSum", [f"{base}_sq", *axes], [f"{base}_sum"], name=f"{base}_sum", **extra),
                  helper.make_node("Sqrt", [f"{base}_sum"], list(node.output), name=f"{base}_sqrt")]
        changed += 1
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return changed
