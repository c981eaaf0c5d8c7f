"""The facade on ONNX Runtime: results equal the raw runtime's, inputs are checked, errors are typed."""

from __future__ import annotations

import numpy as np
import pytest

import edgekit
from edgekit import InputError, ModelLoadError

from models import ort_reference, run_in_threads


def test_mlp_matches_raw_onnxruntime(mlp_onnx):
    sess = edgekit.load(mlp_onnx)
    assert sess.backend == "onnxruntime"
    assert [s.name for s in sess.inputs] == ["x"]
    assert sess.inputs[0].shape == ("N", 16) and sess.inputs[0].dtype == np.float32
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    got = sess.run({"x": x})
    ref = ort_reference(mlp_onnx, {"x": x})
    # same runtime, same options: bit-identical
    np.testing.assert_array_equal(got["logits"], ref["logits"])


def test_single_array_accepted_for_one_input(mlp_onnx):
    sess = edgekit.load(mlp_onnx)
    x = np.ones((2, 16), np.float32)
    np.testing.assert_array_equal(sess.run(x)["logits"], sess.run({"x": x})["logits"])


def test_two_inputs_and_output_selection(two_onnx):
    sess = edgekit.load(two_onnx)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 2.0, np.float32)
    out = sess.run({"a": a, "b": b}, outputs=["prod"])
    assert list(out) == ["prod"]
    np.testing.assert_array_equal(out["prod"], a * b)
    with pytest.raises(InputError, match="2 inputs"):
        sess.run(a)
    with pytest.raises(InputError, match="unknown output 'nope'"):
        sess.run({"a": a, "b": b}, outputs=["nope"])


@pytest.mark.parametrize(
    "feeds, pattern",
    [
        ({}, "missing input 'x'"),
        ({"x": np.zeros((1, 16), np.float32), "y": np.zeros(1)}, "unknown input 'y'"),
        ({"x": np.zeros((16,), np.float32)}, "expected rank 2"),
        ({"x": np.zeros((1, 15), np.float32)}, "dim 1 must be 16, got 15"),
        ({"x": np.zeros((1, 16), np.float64)}, "expected dtype float32, got float64"),
    ],
)
def test_bad_inputs_are_input_errors(mlp_onnx, feeds, pattern):
    sess = edgekit.load(mlp_onnx)
    with pytest.raises(InputError, match=pattern):
        sess.run(feeds)


def test_threads_share_a_session(cnn_onnx):
    sess = edgekit.load(cnn_onnx, threads=1)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    refs = [ort_reference(cnn_onnx, {"image": x})["probs"] for x in xs]

    def work(i: int) -> None:
        for _ in range(20):
            np.testing.assert_allclose(sess.run({"image": xs[i]})["probs"], refs[i], rtol=1e-5, atol=1e-6)

    run_in_threads(work, range(8))


def test_bad_files_are_model_load_errors(tmp_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(ModelLoadError, match="no such file"):
        edgekit.load(missing)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelLoadError, match="corrupt.onnx"):
        edgekit.load(corrupt)
    weird = tmp_path / "model.bin"
    weird.write_bytes(b"1234")
    with pytest.raises(ModelLoadError, match="unknown model format"):
        edgekit.load(weird)
    fake_tfl = tmp_path / "fake.tflite"
    fake_tfl.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ModelLoadError, match="fake.tflite"):
        edgekit.load(fake_tfl)


def test_truncated_onnx(tmp_path, cnn_onnx):
    data = cnn_onnx.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated.onnx"):
        edgekit.load(bad)


def test_unknown_backend_and_wrong_format(mlp_onnx):
    with pytest.raises(InputError, match="unknown backend 'nope'"):
        edgekit.load(mlp_onnx, backend="nope")
    with pytest.raises(InputError, match="cannot run onnx"):
        edgekit.load(mlp_onnx, backend="litert")
    with pytest.raises(InputError, match="unknown option"):
        edgekit.load(mlp_onnx, colour="blue")


def test_backends_lists_every_backend_with_reason():
    rows = {r["name"]: r for r in edgekit.backends()}
    assert {"onnxruntime", "litert", "coreml", "tvm"} <= set(rows)
    assert rows["onnxruntime"]["available"]
    for r in rows.values():
        assert r["available"] or r["reason"]


def test_string_inputs(tmp_path):
    """String tensors: a spec of dtype object that takes str or object arrays."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["s"], ["u"])], "g",
                          [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
                          [helper.make_tensor_value_info("u", TensorProto.STRING, [2])])
    path = tmp_path / "strings.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    sess = edgekit.load(path)
    assert sess.inputs[0].dtype == np.dtype(object)
    for arr in (np.array(["ab", "Cd"]), np.array(["ab", "Cd"], dtype=object)):
        assert list(sess.run({"s": arr})["u"]) == ["ab", "Cd"]
    with pytest.raises(InputError, match="expected dtype object, got float32"):
        sess.run({"s": np.zeros(2, np.float32)})
