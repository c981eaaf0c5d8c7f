"""The facade on LiteRT: same results as the raw interpreter, signature binding, checks, thread pool."""

from __future__ import annotations

import numpy as np
import pytest

import edgekit
from edgekit import InputError

from models import ort_reference, run_in_threads


def _raw(path, feeds):
    """Plain LiteRT, bound by signature when there is one, else by index in the given order."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    sigs = interp.get_signature_list()
    if sigs:
        return interp.get_signature_runner(next(iter(sigs)))(**feeds)
    interp.allocate_tensors()
    for d, v in zip(interp.get_input_details(), feeds.values()):
        interp.set_tensor(d["index"], v)
    interp.invoke()
    sess_out = edgekit.load(path).outputs
    return {s.name: interp.get_tensor(d["index"]) for s, d in zip(sess_out, interp.get_output_details())}


def test_litert_matches_raw_interpreter_and_onnxruntime(tflite_mlp):
    path, src = tflite_mlp
    sess = edgekit.load(path)
    assert sess.backend == "litert" and sess.format == "tflite"
    assert [s.shape for s in sess.inputs] == [(2, 16), (2, 10)]  # the source's order is kept
    assert [s.shape for s in sess.outputs] == [(2, 10), (2, 1)]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    bias = rng.standard_normal((2, 10)).astype(np.float32)
    names = [s.name for s in sess.inputs]
    got = sess.run({names[0]: x, names[1]: bias})
    raw = _raw(path, {names[0]: x, names[1]: bias})
    for k, v in raw.items():
        np.testing.assert_array_equal(got[k], v)  # same runtime: identical
    ref = ort_reference(src, {"x": x, "bias": bias})
    outs = [got[s.name] for s in sess.outputs]
    np.testing.assert_allclose(outs[0], ref["y"], rtol=1e-5, atol=1e-5)  # fp32 conversion
    np.testing.assert_allclose(outs[1], ref["s"], rtol=1e-5, atol=1e-5)


def test_litert_checks_inputs(tflite_mlp):
    path, _ = tflite_mlp
    sess = edgekit.load(path)
    a, b = sess.inputs
    with pytest.raises(InputError, match="missing input"):
        sess.run({a.name: np.zeros(a.shape, np.float32)})
    with pytest.raises(InputError, match="expected dtype float32"):
        sess.run({a.name: np.zeros(a.shape, np.float64), b.name: np.zeros(b.shape, np.float32)})


def test_litert_threads_use_a_pool(tflite_mlp):
    path, _ = tflite_mlp
    sess = edgekit.load(path, threads=1)
    a, b = sess.inputs
    rng = np.random.default_rng(0)
    cases = [{a.name: rng.standard_normal(a.shape).astype(np.float32),
              b.name: rng.standard_normal(b.shape).astype(np.float32)} for _ in range(6)]
    refs = [_raw(path, f) for f in cases]

    def work(i):
        for _ in range(30):
            out = sess.run(cases[i])
            for k, v in refs[i].items():
                np.testing.assert_array_equal(out[k], v)

    run_in_threads(work, range(6))


def test_litert_indexed_binding_with_changing_batch(tmp_path):
    """No signature (inputs not in sorted order) and a dynamic batch: each pooled interpreter resizes correctly."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.converters import get_exporter

    exp = get_exporter("tflite")
    if exp.unavailable_reason():
        pytest.skip(exp.unavailable_reason())
    n = helper.make_node
    g = helper.make_graph(
        [n("Add", ["zeta", "zeta"], ["z2"]), n("Add", ["z2", "alpha"], ["out"])], "zeta_alpha",
        [helper.make_tensor_value_info("zeta", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("alpha", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])])
    src = tmp_path / "zeta_alpha.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    sess = edgekit.load(exp.export(src, tmp_path / "zeta_alpha.tflite", "fp32"))
    assert [s.name for s in sess.inputs] == ["zeta", "alpha"]
    rng = np.random.default_rng(0)

    def work(seed):
        r = np.random.default_rng(seed)
        for batch in (1, 3, 1, 5, 3, 1):
            z = r.standard_normal((batch, 4)).astype(np.float32)
            a = r.standard_normal((batch, 4)).astype(np.float32)
            np.testing.assert_allclose(sess.run({"zeta": z, "alpha": a})["out"], 2 * z + a, atol=1e-6)

    work(int(rng.integers(1000)))
    run_in_threads(work, range(4))


def test_litert_shape_bucket_signatures(tmp_path, torch_to_tflite):
    """A .tflite with one signature per sequence length (shared weights) is one model with a dynamic length:
    each call runs the signature matching the fed shapes (vs torch, 1e-5 abs); other shapes are refused."""
    torch = torch_to_tflite
    from edgekit.converters.export_tflite import export_torch_signatures

    class Pool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)
            self.lin = torch.nn.Linear(8, 4)

        def forward(self, ids, mask):
            h = self.lin(self.emb(ids)) * mask.unsqueeze(-1).float()
            return h.sum(1) / mask.sum(1, keepdim=True).float()

    torch.manual_seed(0)
    net = Pool().eval()
    ex = {f"s{n}": (torch.zeros(1, n, dtype=torch.long), torch.ones(1, n, dtype=torch.long)) for n in (4, 8)}
    path = export_torch_signatures(net, ex, tmp_path / "pool.tflite")
    sess = edgekit.load(path)
    assert [s.shape for s in sess.inputs] == [(1, None), (1, None)] and sess.outputs[0].shape == (1, 4)
    assert sess._runner.signatures == {"s4": [(1, 4), (1, 4)], "s8": [(1, 8), (1, 8)]}
    rng = np.random.default_rng(0)
    a, b = (s.name for s in sess.inputs)
    for n in (8, 4, 8):
        ids, mask = rng.integers(0, 50, (1, n)), (rng.random((1, n)) < 0.7).astype(np.int64)
        mask[0, 0] = 1
        with torch.no_grad():
            ref = net(torch.as_tensor(ids), torch.as_tensor(mask)).numpy()
        got = sess.run({a: ids.astype(sess.inputs[0].dtype), b: mask.astype(sess.inputs[1].dtype)})
        np.testing.assert_allclose(next(iter(got.values())), ref, atol=1e-5)  # same float32 math
    with pytest.raises(InputError, match=r"fixed input shapes.*s4: \(1, 4\)"):
        sess.run({a: np.zeros((1, 6), sess.inputs[0].dtype), b: np.ones((1, 6), sess.inputs[1].dtype)})
