"""Multi-variant bundles for the budget tests, built with BundleWriter (no converter involved).

``mlp_bundle``: an fp32 MLP (wide hidden layer, dynamic batch) and a cheap variant that keeps only the
first hidden units (a structured prune, ~30x less work); the cheap variant's validation metrics (top-1
agreement and cosine against the fp32 outputs, on 512 random inputs) are computed here with onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.bundle_writer import BundleWriter
from edgekit.specs import TensorSpec


def mlp_from_weights(w1, b1, w2, b2) -> onnx.ModelProto:
    """x[N, d_in] -> MatMul/Add/Relu/MatMul/Add -> logits[N, d_out]."""
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in ((w1, "W1"), (b1, "b1"), (w2, "W2"),
                                                                              (b2, "b2"))]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W1"], ["h0"]), n("Add", ["h0", "b1"], ["h1"]), n("Relu", ["h1"], ["h2"]),
             n("MatMul", ["h2", "W2"], ["h3"]), n("Add", ["h3", "b2"], ["logits"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w1.shape[0]])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", w2.shape[1]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def validation(ref: np.ndarray, got: np.ndarray) -> dict:
    """Top-1 agreement and mean cosine of ``got`` against ``ref`` (rows are samples)."""
    top1 = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    cos = float(np.mean(np.sum(ref * got, -1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))))
    return {"top1": top1, "cosine": cos, "method": "top1 agreement vs fp32 on 512 random inputs"}


def mlp_bundle(out: Path, d_in: int = 256, hidden: int = 2048, keep: int = 64, d_out: int = 10,
               seed: int = 0) -> Path:
    """Write a two-variant bundle (``fp32`` wide, ``pruned`` narrow) to ``out`` and return its path."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((d_in, hidden)) / np.sqrt(d_in)
    b1 = rng.standard_normal(hidden) * 0.1
    w2 = rng.standard_normal((hidden, d_out)) / np.sqrt(hidden)
    b2 = rng.standard_normal(d_out) * 0.1
    work = out.parent / f".{out.name}-src"
    work.mkdir(parents=True, exist_ok=True)
    full, small = work / "model.onnx", work / "model-pruned.onnx"
    onnx.save(mlp_from_weights(w1, b1, w2, b2), str(full))
    onnx.save(mlp_from_weights(w1[:, :keep], b1[:keep], w2[:keep] * (hidden / keep) ** 0.5, b2), str(small))
    x = rng.standard_normal((512, d_in)).astype(np.float32)
    ref = _ort_run(full, x)
    ins = [TensorSpec("x", ("N", d_in), np.dtype(np.float32))]
    outs = [TensorSpec("logits", ("N", d_out), np.dtype(np.float32))]
    with BundleWriter(out, force=True, inputs=ins, outputs=outs) as w:
        w.add_variant("fp32", "onnx", "fp32", full, ins, outs, validation={**validation(ref, ref), "passed": True})
        val = validation(ref, _ort_run(small, x))
        w.add_variant("pruned", "onnx", "fp32", small, ins, outs, validation={**val, "passed": True},
                      pruning=f"hidden {hidden}->{keep}")
    return out
