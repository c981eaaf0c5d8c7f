"""Small ONNX models built in-process for the tests (no downloads): MLP, CNN, two-input, BERT-like block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(graph, opset: int = OPSET) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgekit-tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _w(rng, *shape, scale=0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def float_graph(name: str, nodes, inputs: dict[str, list], outputs: dict[str, list], inits) -> onnx.ModelProto:
    """A checked model from ``nodes`` with float inputs/outputs {name: shape} and initializers ``inits``."""
    def io(specs):
        return [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in specs.items()]

    return _model(helper.make_graph(nodes, name, io(inputs), io(outputs), inits))


def mlp(batch: int | str = "N", d_in: int = 16, d_hidden: int = 32, d_out: int = 10, seed: int = 0):
    """x[batch, d_in] -> Gemm -> Relu -> Gemm -> logits[batch, d_out]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, d_in, d_hidden), "W1"),
             numpy_helper.from_array(_w(rng, d_hidden, scale=0.1), "b1"),
             numpy_helper.from_array(_w(rng, d_hidden, d_out), "W2"),
             numpy_helper.from_array(_w(rng, d_out, scale=0.1), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
             helper.make_node("Add", ["h3", "b2"], ["logits"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, d_in])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, d_out])], inits)
    return _model(g)


def cnn(batch: int = 1, channels: int = 3, size: int = 16, classes: int = 10, seed: int = 0,
        weights: dict[str, np.ndarray] | None = None):
    """image[1,3,16,16] -> Conv/Relu x2 -> GlobalAveragePool -> Flatten -> Gemm -> Softmax.

    Random weights by default (its output hardly depends on a random-normal input: use :func:`digits_cnn` where a
    test must tell a working variant from one that ignores its input); ``weights`` {c1w, c1b, c2w, c2b, fw, fb}."""
    rng = np.random.default_rng(seed)
    w = weights or {"c1w": _w(rng, 8, channels, 3, 3), "c1b": _w(rng, 8, scale=0.1),
                    "c2w": _w(rng, 16, 8, 3, 3, scale=0.2), "c2b": _w(rng, 16, scale=0.1),
                    "fw": _w(rng, classes, 16), "fb": _w(rng, classes, scale=0.1)}
    inits = [numpy_helper.from_array(np.asarray(w[k], np.float32), k) for k in ("c1w", "c1b", "c2w", "c2b", "fw", "fb")]
    nodes = [
        helper.make_node("Conv", ["image", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2w", "c2b"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    g = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])], inits)
    return _model(g)


DIGITS_TRAIN = 1000   #: digits_images rows [0, DIGITS_TRAIN) train digits_cnn; the rest are held out for tests


def digits_images(start: int = DIGITS_TRAIN, n: int = 64) -> np.ndarray:
    """scikit-learn's bundled 8x8 digits, rows [start, start + n), as [n, 3, 16, 16] float32 in [-1, 1]
    (each pixel repeated 2x2, the grey image in all three channels)."""
    from sklearn.datasets import load_digits

    x = load_digits().images[start:start + n].astype(np.float32) / 8.0 - 1.0
    x = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    return np.ascontiguousarray(np.repeat(x[:, None], 3, axis=1))


def digits_labels(start: int = DIGITS_TRAIN, n: int = 64) -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target[start:start + n]


def digits_cnn(steps: int = 250, seed: int = 0):
    """:func:`cnn` trained on the digits (rows [0, DIGITS_TRAIN)) with PyTorch: Adam on minibatches of 100, one
    thread, ~6 s of CPU. Its output depends strongly on its input (held-out accuracy 0.87, 85% of held-out digits
    with a top-1 margin > 0.2, cosine of an output against the mean output 0.24-1), so a variant that ignores or
    scrambles its input fails a top-1 check."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(8, 16, 3, padding=1, stride=2), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
        x = torch.from_numpy(digits_images(0, DIGITS_TRAIN))
        y = torch.from_numpy(digits_labels(0, DIGITS_TRAIN)).long()
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        for step in range(steps):
            i = (step * 100) % DIGITS_TRAIN
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[i:i + 100]), y[i:i + 100]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    p = [t.detach().numpy() for t in net.parameters()]
    return cnn(weights=dict(zip(("c1w", "c1b", "c2w", "c2b", "fw", "fb"), p)))


def decided_top1(ref: np.ndarray, got: np.ndarray, margin: float = 0.2) -> tuple[float, int]:
    """(top-1 agreement of ``got`` with ``ref``, number of rows) over the rows [N, classes] where the reference is
    decided: its top-1 score leads the second by more than ``margin``."""
    ref, got = np.asarray(ref).reshape(len(ref), -1), np.asarray(got).reshape(len(got), -1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    keep = top2[:, 1] - top2[:, 0] > margin
    if not keep.any():
        return 0.0, 0
    return float((ref[keep].argmax(1) == got[keep].argmax(1)).mean()), int(keep.sum())


def pointwise_cnn(seed: int = 0):
    """image[1,3,12,12] -> 3x3 stem/Relu -> 1x1 Conv 16->48 (no bias)/Relu -> 1x1 Conv 48->32/Relu -> GAP ->
    Gemm -> logits[1,10]: pointwise convs and a Gemm large enough for weight-only int8 and GPTQ."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, 16, 3, 3, 3), "sw"), numpy_helper.from_array(_w(rng, 16, scale=0.1), "sb"),
             numpy_helper.from_array(_w(rng, 48, 16, 1, 1), "p1w"),
             numpy_helper.from_array(_w(rng, 32, 48, 1, 1, scale=0.2), "p2w"),
             numpy_helper.from_array(_w(rng, 32, scale=0.1), "p2b"),
             numpy_helper.from_array(_w(rng, 10, 32), "fw"), numpy_helper.from_array(_w(rng, 10, scale=0.1), "fb")]
    nodes = [helper.make_node("Conv", ["image", "sw", "sb"], ["s"], pads=[1, 1, 1, 1], name="stem"),
             helper.make_node("Relu", ["s"], ["sr"]),
             helper.make_node("Conv", ["sr", "p1w"], ["p1"], name="expand"), helper.make_node("Relu", ["p1"], ["r1"]),
             helper.make_node("Conv", ["r1", "p2w", "p2b"], ["p2"], name="project"),
             helper.make_node("Relu", ["p2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], transB=1, name="fc")]
    g = helper.make_graph(
        nodes, "pointwise_cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    return _model(g)


def two_inputs():
    """a[2,3] float, b[2,3] float, k[] int64 unused-but-typed -> sum = a + b, prod = a * b."""
    nodes = [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])]
    g = helper.make_graph(
        nodes, "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("prod", TensorProto.FLOAT, [2, 3])])
    return _model(g)


def bert_block(seq: int = 8, hidden: int = 32, vocab: int = 100, seed: int = 0):
    """input_ids[1, seq] int64 -> embedding -> self-attention -> LayerNorm -> GELU MLP -> hidden[1, seq, H]."""
    rng = np.random.default_rng(seed)
    H = hidden
    inits = {
        "emb": _w(rng, vocab, H, scale=0.5), "Wq": _w(rng, H, H, scale=0.2), "Wk": _w(rng, H, H, scale=0.2),
        "Wv": _w(rng, H, H, scale=0.2), "Wo": _w(rng, H, H, scale=0.2), "W1": _w(rng, H, 2 * H, scale=0.2),
        "W2": _w(rng, 2 * H, H, scale=0.2), "gamma": np.ones(H, np.float32), "beta": np.zeros(H, np.float32),
        "scale": np.array(1.0 / np.sqrt(H), np.float32), "sqrt2": np.array(np.sqrt(2.0), np.float32),
        "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32),
    }
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "input_ids"], ["x"]),
        n("MatMul", ["x", "Wq"], ["q"]), n("MatMul", ["x", "Wk"], ["k"]), n("MatMul", ["x", "Wv"], ["v"]),
        n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["s0"]), n("Mul", ["s0", "scale"], ["s1"]),
        n("Softmax", ["s1"], ["p"], axis=-1), n("MatMul", ["p", "v"], ["a0"]),
        n("MatMul", ["a0", "Wo"], ["a1"]), n("Add", ["a1", "x"], ["r0"]),
        n("LayerNormalization", ["r0", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5),
        n("MatMul", ["ln", "W1"], ["f0"]),
        n("Div", ["f0", "sqrt2"], ["g0"]), n("Erf", ["g0"], ["g1"]), n("Add", ["g1", "one"], ["g2"]),
        n("Mul", ["f0", "g2"], ["g3"]), n("Mul", ["g3", "half"], ["gelu"]),
        n("MatMul", ["gelu", "W2"], ["f1"]), n("Add", ["f1", "ln"], ["hidden"]),
    ]
    g = helper.make_graph(
        nodes, "bert_block", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, seq, H])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return _model(g)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def ort_reference(path: Path, feeds: dict) -> dict:
    """Outputs of plain onnxruntime (the reference every test compares against)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def cumsum_model(seed: int = 0):
    """x[1,4,8] -> MatMul -> CumSum(axis 1) -> Relu -> MatMul -> y (CumSum: in neither TFLite's nor Core ML's table)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 8)) * 0.3).astype(np.float32), "W1"),
             numpy_helper.from_array((rng.standard_normal((8, 6)) * 0.3).astype(np.float32), "W2"),
             numpy_helper.from_array(np.array(1, np.int64), "axis")]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W1"], ["h"]), n("CumSum", ["h", "axis"], ["c"]), n("Relu", ["c"], ["r"]),
             n("MatMul", ["r", "W2"], ["y"])]
    g = helper.make_graph(nodes, "cumsum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6])], inits)
    return _model(g)


def celu_model():
    """x[2,5] -> Celu -> Add: ONNX Runtime runs Celu, TVM's ONNX frontend has no converter for it."""
    n = helper.make_node
    nodes = [n("Celu", ["x"], ["c"], alpha=1.0), n("Add", ["c", "x"], ["y"])]
    g = helper.make_graph(nodes, "celu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])])
    return _model(g)


def branches_model():
    """Two parallel Softmax branches joined by Add: forcing Softmax must give ONE fallback segment."""
    n = helper.make_node
    nodes = [n("Relu", ["x"], ["a"]), n("Neg", ["x"], ["b"]), n("Softmax", ["a"], ["sa"], axis=-1),
             n("Softmax", ["b"], ["sb"], axis=-1), n("Add", ["sa", "sb"], ["y"])]
    g = helper.make_graph(nodes, "branches", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 7])])
    return _model(g)


def two_in_two_out(seed: int = 0):
    """x[2,16], bias[2,10] -> y = relu(x W + b) + bias, s = sum(tanh(x), axis 1, keepdims)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W"], ["h0"]), n("Add", ["h0", "b"], ["h1"]), n("Relu", ["h1"], ["h2"]),
             n("Add", ["h2", "bias"], ["y"]), n("Tanh", ["x"], ["t"]), n("ReduceSum", ["t", "axes"], ["s"], keepdims=1)]
    g = helper.make_graph(
        nodes, "two_in_two_out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, [2, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 1])],
        [numpy_helper.from_array(_w(rng, 16, 10), "W"), numpy_helper.from_array(_w(rng, 10, scale=0.1), "b"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    return _model(g)


def run_in_threads(work, args) -> None:
    """Run ``work(a)`` for each ``a`` in its own thread, all at once; re-raise the first failure here."""
    import threading

    errors: list[BaseException] = []

    def guarded(a) -> None:
        try:
            work(a)
        except BaseException as exc:  # noqa: BLE001 - reported in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def tiny_tflite(path: Path, n: int = 4) -> Path:
    """A hand-built .tflite (no converter): y[1, n] = x[1, n] + [0, 1, ..., n-1] (one ADD op, float32)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    def tensor(name: str, buf: int):
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = [1, n], s.TensorType.FLOAT32, buf, name
        return t

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.ADD
    code.version = 1
    const = s.BufferT()
    const.data = np.arange(n, dtype=np.float32).tobytes()
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 2], [1]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.AddOptions, s.AddOptionsT()
    sg = s.SubGraphT()
    sg.tensors, sg.operators, sg.inputs, sg.outputs = [tensor("x", 1), tensor("y", 2), tensor("c", 3)], [op], [0], [1]
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs = 3, [code], [sg]
    m.buffers = [s.BufferT(), s.BufferT(), s.BufferT(), const]
    fb = flatbuffers.Builder(0)
    fb.Finish(m.Pack(fb), file_identifier=b"TFL3")
    Path(path).write_bytes(bytes(fb.Output()))
    return Path(path)


# ---- validation test models (tests/converters/test_validate.py): each builds the source, or a copy with a planted
# ---- bug on one output: "zero" (x 0), "negate", "swap" (reversed along its class/feature axis), "shift" (ints + 1)

def _plant(src: str, out: str, broken: str | None, width: int, axis: int, dtype=np.float32) -> tuple[list, list]:
    """Nodes and initializers that write ``src`` to ``out``, with the bug ``broken`` (None: unchanged)."""
    n, k = helper.make_node, f"{out}_bug"
    if broken is None:
        return [n("Identity", [src], [out])], []
    if broken in ("zero", "shift"):
        c = numpy_helper.from_array(np.array(0 if broken == "zero" else 1, dtype), k)
        return [n("Mul" if broken == "zero" else "Add", [src, k], [out])], [c]
    if broken == "negate":
        return [n("Neg", [src], [out])], []
    return [n("Gather", [src, k], [out], axis=axis)], [numpy_helper.from_array(np.arange(width)[::-1].copy(), k)]


def _io(name: str, shape: list, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def echo_big_small(broken: str | None = None, seed: int = 0):
    """x[1,16], ids[1,8] int64 -> ids (echo; ``broken="shift"`` plants on it), big[1,256] ~100s, small[1,4] tanh."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    small, inits = _plant("t", "small", None if broken == "shift" else broken, 4, 1)
    echo, inits2 = _plant("ids", "ids_out", "shift" if broken == "shift" else None, 8, 1, np.int64)
    nodes = [n("MatMul", ["x", "Wb"], ["big"]), n("MatMul", ["x", "Ws"], ["h"]), n("Tanh", ["h"], ["t"])]
    g = helper.make_graph(nodes + small + echo, "echo_big_small", [_io("x", [1, 16]), _io("ids", [1, 8], 7)],
                          [_io("ids_out", [1, 8], 7), _io("big", [1, 256]), _io("small", [1, 4])],
                          [numpy_helper.from_array(_w(rng, 16, 256, scale=30.0), "Wb"),
                           numpy_helper.from_array(_w(rng, 16, 4, scale=0.5), "Ws")] + inits + inits2)
    return _model(g)


def classifier_pair(broken: str | None = None, seed: int = 0):
    """x[1,64] -> logits[1,1000] (spread: std ~4) and aux[1,2] (planted bug on aux)."""
    rng = np.random.default_rng(seed)
    aux, inits = _plant("a", "aux", broken, 2, 1)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["logits"]), helper.make_node("MatMul", ["x", "W2"], ["a"])]
    g = helper.make_graph(nodes + aux, "classifier_pair", [_io("x", [1, 64])],
                          [_io("logits", [1, 1000]), _io("aux", [1, 2])],
                          [numpy_helper.from_array(_w(rng, 64, 1000, scale=0.5), "W1"),
                           numpy_helper.from_array(_w(rng, 64, 2, scale=0.2), "W2")] + inits)
    return _model(g)


def text_map(broken: str | None = None):
    """x[1,1,16,16] (text: blocks of 1) -> 3x3 box Conv -> Sigmoid: ~1e-7 where x is ~0, ~1 on the blocks."""
    w = np.full((1, 1, 3, 3), 40 / 9, np.float32)
    m, inits = _plant("s", "map", broken, 16, 3)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"])]
    return float_graph("text_map", nodes + m, {"x": [1, 1, 16, 16]}, {"map": [1, 1, 16, 16]},
                       [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([-17.0], np.float32), "B")]
                       + inits)


def detector_head(broken: str | None = None):
    """feat[1,6,64] -> [1, 4 + 2 classes, 64 anchors]: boxes feat*100+320 (pixels), scores sigmoid(4 feat)."""
    n = helper.make_node
    sc, inits = _plant("p", "scores", broken, 2, 1)
    c = [numpy_helper.from_array(np.array(v, dt), k) for k, v, dt in
         [("s0", [0], np.int64), ("s4", [4], np.int64), ("s6", [6], np.int64), ("ax", [1], np.int64),
          ("k100", 100, np.float32), ("k320", 320, np.float32), ("k4", 4, np.float32)]]
    nodes = [n("Slice", ["feat", "s0", "s4", "ax"], ["fb"]), n("Mul", ["fb", "k100"], ["b1"]),
             n("Add", ["b1", "k320"], ["boxes"]), n("Slice", ["feat", "s4", "s6", "ax"], ["fs"]),
             n("Mul", ["fs", "k4"], ["f4"]), n("Sigmoid", ["f4"], ["p"])] + sc + \
        [n("Concat", ["boxes", "scores"], ["det"], axis=1)]
    return float_graph("detector_head", nodes, {"feat": [1, 6, 64]}, {"det": [1, 6, 64]}, c + inits)


def seg_and_ctc(broken: str | None = None, seed: int = 0):
    """x[1,3,8,8] -> 1x1 Conv -> seg[1,4,8,8] logits; y[1,12,16] -> MatMul -> Softmax -> ctc[1,12,20] (bug on both)."""
    rng = np.random.default_rng(seed)
    seg, i1 = _plant("sl", "seg", broken, 4, 1)
    ctc, i2 = _plant("pr", "ctc", broken, 20, 2)
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["sl"]), helper.make_node("MatMul", ["y", "Wm"], ["l"]),
             helper.make_node("Softmax", ["l"], ["pr"], axis=-1)]
    return float_graph("seg_and_ctc", nodes + seg + ctc, {"x": [1, 3, 8, 8], "y": [1, 12, 16]},
                       {"seg": [1, 4, 8, 8], "ctc": [1, 12, 20]},
                       [numpy_helper.from_array(_w(rng, 4, 3, 1, 1, scale=1.0), "Wc"),
                        numpy_helper.from_array(_w(rng, 16, 20, scale=1.0), "Wm")] + i1 + i2)


def dynamic_hw_segmenter(seed: int = 0):
    """images[N,3,H,W] (dynamic N, H, W) -> Conv stride 2 -> Relu -> ConvTranspose stride 2 -> Sigmoid -> mask[N,1,H,W]:
    a text-detector-like map whose static-shape exports (TFLite, Core ML) need H and W fixed."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, 8, 3, 3, 3), "cw"), numpy_helper.from_array(_w(rng, 8, scale=0.1), "cb"),
             numpy_helper.from_array(_w(rng, 8, 1, 2, 2), "tw"), numpy_helper.from_array(_w(rng, 1, scale=0.1), "tb")]
    n = helper.make_node
    nodes = [n("Conv", ["images", "cw", "cb"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv"),
             n("Relu", ["c"], ["r"], name="relu"),
             n("ConvTranspose", ["r", "tw", "tb"], ["t"], strides=[2, 2], name="up"),
             n("Sigmoid", ["t"], ["mask"], name="sigmoid")]
    g = helper.make_graph(nodes, "dyn_hw_seg", [_io("images", ["N", 3, "H", "W"])], [_io("mask", ["N", 1, "H", "W"])],
                          inits)
    return _model(g)


# -- real-graph shapes (issue 12: old opsets, Shape->Reshape chains; dynamic H/W: dynamic_hw_segmenter) ---------

def conv_bn_opset11(seed: int = 0):
    """image[1,3,16,16] -> Conv/BatchNormalization/Relu -> Conv/BN/Relu -> Conv -> map[1,4,16,16] at opset 11 (as
    Paddle2ONNX writes): per-channel static int8 needs an opset >= 13 copy."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    x, cin = "image", 3
    for i, cout in enumerate((16, 16)):
        inits += [numpy_helper.from_array(_w(rng, cout, cin, 3, 3, scale=0.4), f"w{i}"),
                  numpy_helper.from_array(rng.uniform(0.5, 1.5, cout).astype(np.float32), f"g{i}"),
                  numpy_helper.from_array(_w(rng, cout, scale=0.1), f"b{i}"),
                  numpy_helper.from_array(_w(rng, cout, scale=0.1), f"m{i}"),
                  numpy_helper.from_array(rng.uniform(0.5, 2.0, cout).astype(np.float32), f"v{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"]),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}"])]
        x, cin = f"r{i}", cout
    inits.append(numpy_helper.from_array(_w(rng, 4, cin, 1, 1, scale=0.3), "wo"))
    nodes.append(helper.make_node("Conv", [x, "wo"], ["map"]))
    g = helper.make_graph(nodes, "conv_bn_opset11",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return _model(g, opset=11)


def shape_chain(hidden: int = 16, heads: int = 4, seed: int = 0):
    """x[batch, seq, 16] (dynamic batch and seq) -> MatMul -> Shape->Gather->Unsqueeze->Concat->Reshape into heads
    -> Transpose -> Softmax -> back through a second Shape chain -> MatMul -> y[batch, seq, 16]: the reshape
    chains of a sentence-transformer export."""
    rng = np.random.default_rng(seed)
    d = hidden // heads
    inits = [numpy_helper.from_array(_w(rng, hidden, hidden), "W1"),
             numpy_helper.from_array(_w(rng, hidden, hidden), "W2"),
             numpy_helper.from_array(np.array(0, np.int64), "i0"), numpy_helper.from_array(np.array(1, np.int64), "i1"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             numpy_helper.from_array(np.array([heads, d], np.int64), "hd"),
             numpy_helper.from_array(np.array([hidden], np.int64), "hid")]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W1"], ["h"], name="/model/q/MatMul"),
             n("Shape", ["h"], ["shp"], name="/model/Shape"),
             n("Gather", ["shp", "i0"], ["b"], axis=0, name="/model/Gather"),
             n("Gather", ["shp", "i1"], ["s"], axis=0, name="/model/Gather_1"),
             n("Unsqueeze", ["b", "ax0"], ["bu"], name="/model/Unsqueeze"),
             n("Unsqueeze", ["s", "ax0"], ["su"], name="/model/Unsqueeze_1"),
             n("Concat", ["bu", "su", "hd"], ["new"], axis=0, name="/model/Concat"),
             n("Reshape", ["h", "new"], ["/model/Reshape_output_0"], name="/model/Reshape"),
             n("Transpose", ["/model/Reshape_output_0"], ["t"], perm=[0, 2, 1, 3], name="/model/Transpose"),
             n("Softmax", ["t"], ["p"], axis=-1, name="/model/Softmax"),
             n("Transpose", ["p"], ["t2"], perm=[0, 2, 1, 3], name="/model/Transpose_1"),
             n("Concat", ["bu", "su", "hid"], ["back"], axis=0, name="/model/Concat_1"),
             n("Reshape", ["t2", "back"], ["/model/Reshape_1_output_0"], name="/model/Reshape_1"),
             n("MatMul", ["/model/Reshape_1_output_0", "W2"], ["y"], name="/model/o/MatMul")]
    g = helper.make_graph(nodes, "shape_chain",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])], inits)
    return _model(g)


def cast_model(src: int, dst: int, shape: list, opset: int = 21):
    """x[shape] of ONNX element type ``src`` -> Cast -> y of ``dst`` (bfloat16/float8/int4 I/O for the facade)."""
    g = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=dst)], "cast",
                          [_io("x", shape, src)], [_io("y", shape, dst)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgekit-tests")
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m


def sequence_model():
    """x[6, 4] -> SplitToSequence (rows of 2) -> parts: seq(float); parts -> SequenceAt 1 -> second: the rows 2-3;
    and seq_in: seq(int64) -> ConcatFromSequence (axis 0) -> joined."""
    n = helper.make_node
    nodes = [n("SplitToSequence", ["x", "two"], ["parts"], axis=0), n("SequenceAt", ["parts", "one"], ["second"]),
             n("ConcatFromSequence", ["seq_in"], ["joined"], axis=0)]
    inits = [numpy_helper.from_array(np.array(2, np.int64), "two"), numpy_helper.from_array(np.array(1, np.int64),
                                                                                             "one")]
    seq_f = helper.make_tensor_sequence_value_info("parts", TensorProto.FLOAT, None)
    seq_i = helper.make_tensor_sequence_value_info("seq_in", TensorProto.INT64, None)
    g = helper.make_graph(nodes, "sequences", [_io("x", [6, 4]), seq_i],
                          [seq_f, _io("second", [2, 4]), _io("joined", ["n"], TensorProto.INT64)], inits)
    return _model(g)


# -- TVM isolation and memory (issue 12 item 5, issue 13 items 2 and 6) -------------------------------------------

def wide_mlp(width: int = 512, seed: int = 0):
    """x[1, width] -> MatMul [width, width] -> Relu -> y[1, width]: ~1 MB of weights, so that a per-open leak of
    the weights' size shows in RSS within a few hundred session opens."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    return float_graph("wide_mlp", nodes, {"x": [1, width]}, {"y": [1, width]},
                       [numpy_helper.from_array(_w(rng, width, width, scale=1 / np.sqrt(width)), "w")])


def split_needs_height(seed: int = 0):
    """x[1, 3, H, W] (dynamic H, W) -> Split along H into 2 + 2 rows -> Relu(top) + bottom -> y: only H = 4 works, so
    guessing dynamic dims as 1 leaves shape inference without types (composites must ask for --input-shape)."""
    n = helper.make_node
    nodes = [n("Split", ["x", "sizes"], ["top", "bottom"], axis=2), n("Relu", ["top"], ["r"]),
             n("Add", ["r", "bottom"], ["y"])]
    g = helper.make_graph(nodes, "split_needs_height", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                       [1, 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2, "W"])],
                          [numpy_helper.from_array(np.array([2, 2], np.int64), "sizes")])
    return _model(g)


def two_symbols(seed: int = 0):
    """a[n, 64] @ W + b[m, 64] with distinct symbolic dims n, m: ORT's symbolic shape inference stops on it (and
    used to save sym_shape_infer_temp.onnx + <uuid>.data into the current directory)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    return float_graph("two_symbols", [n("MatMul", ["a", "W"], ["h"]), n("Add", ["h", "b"], ["y"])],
                       {"a": ["n", 64], "b": ["m", 64]}, {"y": ["n", 64]},
                       [numpy_helper.from_array(_w(rng, 64, 64), "W")])


def conv_transpose_padded(seed: int = 0):
    """x[1,4,7,9] -> ConvTranspose (group 2, stride 2, pads 1, output_padding 1, no kernel_shape attr) -> y."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    return float_graph("conv_transpose_padded",
                       [n("ConvTranspose", ["x", "w", "b"], ["y"], group=2, strides=[2, 2], pads=[1, 1, 1, 1],
                          output_padding=[1, 1])],
                       {"x": [1, 4, 7, 9]}, {"y": [1, 6, 14, 18]},
                       [numpy_helper.from_array(_w(rng, 4, 3, 3, 3, scale=0.5), "w"),
                        numpy_helper.from_array(_w(rng, 6, scale=0.1), "b")])


def layout_pair(nhwc: bool, seed: int = 0):
    """x[1,3,8,8] (NHWC artifact: [1,8,8,3]) -> 1x1 Conv -> y[1,4,8,8] (NHWC: [1,8,8,4]); k int64[1,4] (artifact:
    int32) -> k_out int64: an exporter's layout and dtype changes that validation undoes by position."""
    w = numpy_helper.from_array(_w(np.random.default_rng(seed), 4, 3, 1, 1, scale=1.0), "W")
    n = helper.make_node
    if not nhwc:
        nodes = [n("Conv", ["x", "W"], ["y"]), n("Identity", ["k"], ["k_out"])]
        ins, outs = [_io("x", [1, 3, 8, 8]), _io("k", [1, 4], 7)], [_io("y", [1, 4, 8, 8]), _io("k_out", [1, 4], 7)]
    else:
        nodes = [n("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]), n("Conv", ["xt", "W"], ["yc"]),
                 n("Transpose", ["yc"], ["y"], perm=[0, 2, 3, 1]), n("Cast", ["k"], ["k_out"], to=7)]
        ins, outs = [_io("x", [1, 8, 8, 3]), _io("k", [1, 4], 6)], [_io("y", [1, 8, 8, 4]), _io("k_out", [1, 4], 7)]
    return _model(helper.make_graph(nodes, "layout_pair", ins, outs, [w]))


def scaled_layernorm(d: int = 32, t: int = 16, seed: int = 0):
    """x[1,t,d] -> MatMul -> Mul by per-token scales 0.01..100 -> LayerNorm written out elementwise -> MatMul -> out.

    Like magika's and many exported transformers' decomposed LayerNorm: static int8 of the elementwise chain
    (one scale for tokens 1e4 apart) wrecks it, whatever weighted nodes stay float; int8 weighted ops alone pass."""
    rng = np.random.default_rng(seed)
    inits = {"W1": _w(rng, d, d), "W2": _w(rng, d, 10), "s": np.logspace(-2, 2, t).astype(np.float32).reshape(1, t, 1),
             "eps": np.array(1e-5, np.float32),
             "g": rng.uniform(0.5, 1.5, d).astype(np.float32), "b": _w(rng, d, scale=0.1)}
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W1"], ["h0"], name="mm1"), n("Mul", ["h0", "s"], ["h"], name="scale"),
             n("ReduceMean", ["h"], ["mu"], axes=[-1], name="mean"), n("Sub", ["h", "mu"], ["c"], name="sub"),
             n("Mul", ["c", "c"], ["c2"], name="sq"), n("ReduceMean", ["c2"], ["var"], axes=[-1], name="var"),
             n("Add", ["var", "eps"], ["ve"], name="addeps"), n("Sqrt", ["ve"], ["sd"], name="sqrt"),
             n("Div", ["c", "sd"], ["z"], name="div"), n("Mul", ["z", "g"], ["zg"], name="gamma"),
             n("Add", ["zg", "b"], ["y"], name="beta"), n("MatMul", ["y", "W2"], ["out"], name="mm2")]
    return float_graph("scaled_layernorm", nodes, {"x": [1, t, d]}, {"out": [1, t, 10]},
                       [numpy_helper.from_array(v, k) for k, v in inits.items()])


def scalar_input(seed: int = 0):
    """x[1,4] and a rank-0 int64 ``sr`` (like silero-vad's sample rate) -> y = (x @ W) * float(sr) / 16000."""
    w = numpy_helper.from_array(_w(np.random.default_rng(seed), 4, 3), "W")
    k = numpy_helper.from_array(np.array(1 / 16000, np.float32), "k")
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W"], ["h"]), n("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             n("Mul", ["srf", "k"], ["s"]), n("Mul", ["h", "s"], ["y"])]
    ins = [_io("x", [1, 4]), _io("sr", [], TensorProto.INT64)]
    return _model(helper.make_graph(nodes, "scalar_input", ins, [_io("y", [1, 3])], [w, k]))


def resize_nearest(seed: int = 0):
    """x[1,4,5,6] -> Conv 1x1 -> Resize nearest x2 (asymmetric, floor; empty roi, scales [1,1,2,2]: Paddle2ONNX's
    form) -> y[1,4,10,12]."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    return float_graph("resize_nearest",
                       [n("Conv", ["x", "w"], ["c"]),
                        n("Resize", ["c", "roi", "scales"], ["y"], mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                       {"x": [1, 4, 5, 6]}, {"y": [1, 4, 10, 12]},
                       [numpy_helper.from_array(_w(rng, 4, 4, 1, 1, scale=1.0), "w"),
                        numpy_helper.from_array(np.zeros(0, np.float32), "roi"),
                        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])


def split_parts(seed: int = 0):
    """x[1,6,4] -> Split axis 1 into sizes [2, 4] -> Relu | Sigmoid -> Concat -> y[1,6,4] (Paddle2ONNX heads)."""
    n = helper.make_node
    return float_graph("split_parts",
                       [n("Split", ["x", "sizes"], ["a", "b"], axis=1), n("Relu", ["a"], ["ra"]),
                        n("Sigmoid", ["b"], ["sb"]), n("Concat", ["ra", "sb"], ["y"], axis=1)],
                       {"x": [1, 6, 4]}, {"y": [1, 6, 4]},
                       [numpy_helper.from_array(np.array([2, 4], np.int64), "sizes")])


def deep_relu_mlp(layers: int = 4, width: int = 32, seed: int = 0):
    """x[1, width] -> (MatMul -> Relu) x layers -> y[1, width], no biases: every activation scales with the input, so
    static int8 calibrated on inputs of one scale clips every layer on inputs 8x larger (calibration data that does
    not represent the inputs); dynamic int8, which measures each call's range, does not."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(_w(rng, width, width, scale=1.4 / np.sqrt(width)), f"w{i}"))
        out = "y" if i == layers - 1 else f"r{i}"
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"),
                  helper.make_node("Relu", [f"h{i}"], [out], name=f"relu{i}")]
        x = out
    return float_graph("deep_relu_mlp", nodes, {"x": [1, width]}, {"y": [1, width]}, inits)


def lstm_model(direction: str = "forward", hidden: int = 16, seq: int = 5, d_in: int = 8, batch: int = 1,
               peepholes: bool = False, seed: int = 0):
    """x[seq, batch, d_in] + h0/c0[dirs, batch, hidden] -> ONNX LSTM (B, initial states as graph inputs, optional
    peepholes P) -> Y[seq, dirs, batch, hidden], Y_h/Y_c[dirs, batch, hidden] (silero-vad's recurrent block)."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    inits = [numpy_helper.from_array(_w(rng, dirs, 4 * hidden, d_in), "W"),
             numpy_helper.from_array(_w(rng, dirs, 4 * hidden, hidden), "R"),
             numpy_helper.from_array(_w(rng, dirs, 8 * hidden), "B")]
    ins = ["x", "W", "R", "B", "", "h0", "c0"]
    if peepholes:
        inits.append(numpy_helper.from_array(_w(rng, dirs, 3 * hidden), "P"))
        ins.append("P")
    node = helper.make_node("LSTM", ins, ["Y", "Y_h", "Y_c"], hidden_size=hidden, direction=direction, name="lstm")
    state = [dirs, batch, hidden]
    return float_graph("lstm", [node], {"x": [seq, batch, d_in], "h0": state, "c0": state},
                       {"Y": [seq, dirs, batch, hidden], "Y_h": state, "Y_c": state}, inits)


def ceil_pool_fc(seed: int = 0):
    """image[1,3,24,24] -> Conv 3->8 -> Relu -> MaxPool 3/2 ceil_mode -> Flatten -> Gemm -> logits[1,2] (MTCNN's
    O-Net pattern): its static int8 TFLite from onnx2tf is refused whole by LiteRT's default XNNPACK delegate
    ("failed to create XNNPACK runtime ... failed to prepare")."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["image", "cw", "cb"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc", transB=1)]
    inits = [numpy_helper.from_array(_w(rng, 8, 3, 3, 3), "cw"), numpy_helper.from_array(_w(rng, 8, scale=0.1), "cb"),
             numpy_helper.from_array(_w(rng, 2, 8 * 11 * 11, scale=0.05), "fw"),
             numpy_helper.from_array(_w(rng, 2, scale=0.1), "fb")]
    return float_graph("ceil_pool_fc", nodes, {"image": [1, 3, 24, 24]}, {"logits": [1, 2]}, inits)


def _i64(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.int64), name)


def stft_magnitude(frames: int = 7, bins: int = 9, hop: int = 8, seed: int = 0):
    """x[2, L] -> Unsqueeze -> Conv1d (a [2*bins, 1, 2*hop] basis, stride hop) -> Slice real / imaginary halves on
    axes [1, 2] (channel and time at once, dropping frame 0) -> re^2 + im^2 -> Sqrt -> y[2, bins, frames-1]
    (silero-vad's STFT magnitude: onnx2tf applied such a Slice's starts to the wrong dims)."""
    rng = np.random.default_rng(seed)
    n, big = helper.make_node, np.iinfo(np.int64).max
    inits = [numpy_helper.from_array(_w(rng, 2 * bins, 1, 2 * hop), "basis"), _i64("one", [1]),
             _i64("re_s", [0, 1]), _i64("re_e", [bins, big]), _i64("im_s", [bins, 1]), _i64("im_e", [big, big]),
             _i64("axes", [1, 2]), numpy_helper.from_array(np.array(2, np.float32), "two")]
    nodes = [n("Unsqueeze", ["x", "one"], ["x3"]), n("Conv", ["x3", "basis"], ["spec"], strides=[hop]),
             n("Slice", ["spec", "re_s", "re_e", "axes"], ["re"]), n("Slice", ["spec", "im_s", "im_e", "axes"], ["im"]),
             n("Pow", ["re", "two"], ["re2"]), n("Pow", ["im", "two"], ["im2"]), n("Add", ["re2", "im2"], ["p"]),
             n("Sqrt", ["p"], ["y"])]
    return float_graph("stft_magnitude", nodes, {"x": [2, (frames - 1) * hop + 2 * hop]}, {"y": [2, bins, frames - 1]},
                       inits)


def _lstm_weights(rng, d_in: int, hidden: int) -> list:
    return [numpy_helper.from_array(_w(rng, 1, 4 * hidden, d_in), "W"),
            numpy_helper.from_array(_w(rng, 1, 4 * hidden, hidden), "R"),
            numpy_helper.from_array(_w(rng, 1, 8 * hidden, scale=0.1), "B")]


def conv_lstm_state_io(steps: int = 4, channels: int = 4, d: int = 8, hidden: int = 16, seed: int = 0):
    """x[1, channels, steps] -> Conv1d 1x1 -> Transpose to [steps, 1, d] -> LSTM with h, c[1, 1, hidden] graph
    inputs -> y[steps, 1, hidden], hn, cn (silero-vad's sequence model: state in, state out)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    inits = _lstm_weights(rng, d, hidden) + [numpy_helper.from_array(_w(rng, d, channels, 1, scale=0.5), "wc"),
                                             _i64("one", [1])]
    nodes = [n("Conv", ["x", "wc"], ["f"]), n("Transpose", ["f"], ["seq"], perm=[2, 0, 1]),
             n("LSTM", ["seq", "W", "R", "B", "", "h", "c"], ["Y", "hn", "cn"], hidden_size=hidden),
             n("Squeeze", ["Y", "one"], ["y"])]
    state = [1, 1, hidden]
    return float_graph("conv_lstm_state_io", nodes, {"x": [1, channels, steps], "h": state, "c": state},
                       {"y": [steps, 1, hidden], "hn": state, "cn": state}, inits)


def lstm_packed_state(d: int = 8, hidden: int = 16, seed: int = 0):
    """x[1, d] and state[2, 1, hidden] (h and c packed) -> Gather 0 / 1 -> Unsqueeze -> LSTM one step -> Squeeze ->
    Unsqueeze -> Concat axis 0 -> stateN[2, 1, hidden]; prob[1, 1] = Sigmoid(h @ wo) (silero-vad op15's decoder)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    inits = _lstm_weights(rng, d, hidden) + [_i64("i0", 0), _i64("i1", 1), _i64("ax0", [0]),
                                             numpy_helper.from_array(_w(rng, hidden, 1), "wo")]
    nodes = [n("Unsqueeze", ["x", "ax0"], ["seq"]),
             n("Gather", ["state", "i0"], ["h0"], axis=0), n("Gather", ["state", "i1"], ["c0"], axis=0),
             n("Unsqueeze", ["h0", "ax0"], ["h3"]), n("Unsqueeze", ["c0", "ax0"], ["c3"]),
             n("LSTM", ["seq", "W", "R", "B", "", "h3", "c3"], ["Y", "hn", "cn"], hidden_size=hidden),
             n("Squeeze", ["hn", "ax0"], ["h1"]), n("Squeeze", ["cn", "ax0"], ["c1"]),
             n("Unsqueeze", ["h1", "ax0"], ["h2"]), n("Unsqueeze", ["c1", "ax0"], ["c2"]),
             n("Concat", ["h2", "c2"], ["stateN"], axis=0), n("MatMul", ["h1", "wo"], ["logit"]),
             n("Sigmoid", ["logit"], ["prob"])]
    return float_graph("lstm_packed_state", nodes, {"x": [1, d], "state": [2, 1, hidden]},
                       {"prob": [1, 1], "stateN": [2, 1, hidden]}, inits)


def l2_normalized(d: int = 16, seed: int = 0):
    """x[1, 4, d] -> MatMul -> mean over tokens -> divide by ReduceL2 over axis -1 (keepdims), clipped -> y[1, d] at
    opset 18 (axes as inputs, as after the opset-20 upgrade of an erf-GELU model): sentence-transformers'
    normalised embedding, whose ReduceL2 onnx2tf failed to convert ("tf.norm: 'axis' must be None, an integer ...
    got 1": the axes came from a constant as a numpy integer)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w"], ["h"]), n("ReduceMean", ["h", "tokens"], ["m"], keepdims=0),
             n("ReduceL2", ["m", "last"], ["norm"], keepdims=1), n("Clip", ["norm", "eps", ""], ["safe"]),
             n("Div", ["m", "safe"], ["y"])]
    inits = [numpy_helper.from_array(_w(rng, d, d), "w"), numpy_helper.from_array(np.array([1], np.int64), "tokens"),
             numpy_helper.from_array(np.array([-1], np.int64), "last"),
             numpy_helper.from_array(np.array(1e-12, np.float32), "eps")]
    g = helper.make_graph(nodes, "l2_normalized", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, d])], inits)
    return _model(g, opset=18)


def conv_then_token_linear(seed: int = 0):
    """image[N, 3, 4, 16] (dynamic N) -> Conv 3->8 -> mean over H -> Transpose to tokens [N, 16, 8] -> MatMul + Add
    (a 3-D linear layer, as in PP-OCRv4's SVTR neck) -> y[N, 16, 12]. Once its shapes are fixed, onnxslim fuses such a
    MatMul+Add into Reshape-Gemm-Reshape: the form in which onnx2tf converted PP-OCRv4's recognizer wrong."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    nodes = [n("Conv", ["image", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
             n("ReduceMean", ["r"], ["m"], axes=[2], keepdims=0), n("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
             n("MatMul", ["t", "w"], ["mm"]), n("Add", ["mm", "b"], ["y"])]
    inits = [numpy_helper.from_array(_w(rng, 8, 3, 3, 3), "cw"), numpy_helper.from_array(_w(rng, 8, scale=0.1), "cb"),
             numpy_helper.from_array(_w(rng, 8, 12), "w"), numpy_helper.from_array(_w(rng, 12, scale=0.1), "b")]
    return float_graph("conv_then_token_linear", nodes, {"image": ["N", 3, 4, 16]}, {"y": ["N", 16, 12]}, inits)
