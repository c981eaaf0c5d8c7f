"""The facade on ONNX Runtime with I/O types numpy lacks (ml_dtypes bfloat16, float8, int4, int2) and sequences,
and the tensor specs that carry them (sdk/specs.py: JSON, random feeds, input checks with their exact messages).

Real ONNX Runtime runs of Cast models: float8/bfloat16/int4 values compared exactly (tolerance 0: every value used
is representable, so a packing, nibble-order or byte-order slip changes a value).
"""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto

import edgekit
from edgekit import InputError
from edgekit.specs import TensorSpec, as_dtype, check_value, normalize_feeds, random_feeds

from models import cast_model, save, sequence_model

#: ONNX element type -> ml_dtypes dtype
EXTRA = {TensorProto.BFLOAT16: ml_dtypes.bfloat16, TensorProto.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
         TensorProto.FLOAT8E5M2: ml_dtypes.float8_e5m2, TensorProto.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz,
         TensorProto.FLOAT8E5M2FNUZ: ml_dtypes.float8_e5m2fnuz}


def _load(tmp_path, src: int, dst: int, shape: list, opset: int = 21):
    return edgekit.load(save(cast_model(src, dst, shape, opset), tmp_path / "cast.onnx"), backend="onnxruntime")


@pytest.mark.parametrize("elem", list(EXTRA), ids=lambda e: TensorProto.DataType.Name(e))
def test_float_types_numpy_lacks_go_in_and_out(tmp_path, elem):
    dt = np.dtype(EXTRA[elem])
    x = np.array([[0.5, -1.5, 2.0, 0.0, -0.25], [3.0, -4.0, 1.25, 0.125, 1.0], [-2.0, 0.75, -0.5, 6.0, -8.0]],
                 np.float32)
    out = _load(tmp_path, TensorProto.FLOAT, elem, [3, 5])
    assert out.outputs[0].dtype == dt
    y = out.run({"x": x})["y"]
    assert y.dtype == dt and y.shape == (3, 5)
    np.testing.assert_array_equal(y.astype(np.float32), x)          # exact: every value is representable
    back = _load(tmp_path, elem, TensorProto.FLOAT, [3, 5])
    assert back.inputs[0].dtype == dt
    np.testing.assert_array_equal(back.run({"x": x.astype(dt)})["y"], x)


@pytest.mark.parametrize("name,lo,hi", [("INT4", -8, 7), ("UINT4", 0, 15), ("INT2", -2, 1), ("UINT2", 0, 3)])
def test_sub_byte_ints_keep_order_and_sign(tmp_path, name, lo, hi):
    elem, dt = getattr(TensorProto, name), np.dtype(getattr(ml_dtypes, name.lower()))
    x = np.resize(np.arange(lo, hi + 1), 15).reshape(3, 5)             # odd count: the last byte is half used
    to_sub = _load(tmp_path, TensorProto.INT8 if lo < 0 else TensorProto.UINT8, elem, [3, 5], opset=25)
    y = to_sub.run({"x": x.astype(np.int8 if lo < 0 else np.uint8)})["y"]
    assert y.dtype == dt
    np.testing.assert_array_equal(y.astype(np.int32), x)
    from_sub = _load(tmp_path, elem, TensorProto.FLOAT, [3, 5], opset=25)
    np.testing.assert_array_equal(from_sub.run({"x": x.astype(dt)})["y"], x.astype(np.float32))


def test_extra_dtype_input_is_checked(tmp_path):
    sess = _load(tmp_path, TensorProto.BFLOAT16, TensorProto.FLOAT, [2])
    with pytest.raises(InputError, match="expected dtype bfloat16, got float32"):
        sess.run({"x": np.ones(2, np.float32)})


def test_sequences_in_and_out(tmp_path):
    sess = edgekit.load(save(sequence_model(), tmp_path / "seq.onnx"), backend="onnxruntime")
    kinds = {s.name: s.kind for s in (*sess.inputs, *sess.outputs)}
    assert kinds == {"x": "tensor", "seq_in": "sequence", "parts": "sequence", "second": "tensor",
                     "joined": "tensor"}
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    seq = [np.array([1, 2], np.int64), np.array([3], np.int64), np.array([4, 5, 6], np.int64)]
    out = sess.run({"x": x, "seq_in": seq})
    assert isinstance(out["parts"], list) and len(out["parts"]) == 3
    for got, ref in zip(out["parts"], np.split(x, 3)):
        np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(out["second"], x[2:4])
    np.testing.assert_array_equal(out["joined"], np.arange(1, 7))
    with pytest.raises(InputError, match="seq_in.*sequence"):
        sess.run({"x": x, "seq_in": np.arange(3)})
    with pytest.raises(InputError, match="expected dtype int64, got float32"):
        sess.run({"x": x, "seq_in": [np.ones(2, np.float32)]})


def test_specs_round_trip_and_random_feeds():
    specs = [TensorSpec("a", (2, None), np.dtype(ml_dtypes.bfloat16)), TensorSpec("b", (3,), np.dtype(ml_dtypes.int4)),
             TensorSpec("c", (), np.dtype(np.float32), "sequence")]
    for s in specs:
        assert TensorSpec.from_json(s.to_json()) == s
    assert str(specs[2]) == "c: sequence(float32[])"
    feeds = random_feeds(specs)
    assert feeds["a"].dtype == ml_dtypes.bfloat16 and feeds["a"].shape == (2, 1)
    assert feeds["b"].dtype == ml_dtypes.int4 and set(np.unique(feeds["b"].astype(int))) <= {0, 1}
    assert isinstance(feeds["c"], list) and feeds["c"][0].dtype == np.float32


# -- sdk/specs.py on its own (no runtime): every rule and message ---------------------------------------------------

F32, I64 = np.dtype(np.float32), np.dtype(np.int64)


def _raises(msg: str):
    return pytest.raises(InputError, match="^" + re.escape(msg) + "$")


def test_spec_dtype_names_and_json():
    assert as_dtype("float32") == F32 and as_dtype("bfloat16") == ml_dtypes.bfloat16
    assert as_dtype("int4") == ml_dtypes.int4
    with pytest.raises(AttributeError):
        as_dtype("no_such_dtype")
    assert TensorSpec("x", (None, "N", 3), F32).to_json() == {"name": "x", "shape": [None, "N", 3], "dtype": "float32"}
    seq = TensorSpec("s", (), I64, "optional_sequence")
    assert seq.to_json() == {"name": "s", "shape": [], "dtype": "int64", "kind": "optional_sequence"}
    assert TensorSpec.from_json({"name": 7, "shape": [2], "dtype": "float8_e4m3fn"}) == TensorSpec(
        "7", (2,), np.dtype(ml_dtypes.float8_e4m3fn), "tensor")
    assert TensorSpec.from_json(seq.to_json()) == seq
    assert len({seq, TensorSpec.from_json(seq.to_json())}) == 1         # frozen: hashable, usable as a key


def test_spec_shapes_and_text():
    spec = TensorSpec("x", (None, "N", 0, 3, -1), F32)
    assert spec.concrete_shape(7) == (7, 7, 0, 3, 7) and spec.concrete_shape() == (1, 1, 0, 3, 1)
    assert str(TensorSpec("x", (None, "N", 3), F32)) == "x: float32[?, N, 3]"
    assert str(TensorSpec("o", (2,), I64, "optional")) == "o: optional(int64[2])"
    assert str(TensorSpec("s", (), F32, "optional_sequence")) == "s: optional(sequence(float32[]))"


def test_spec_random_feeds_by_dtype():
    specs = [TensorSpec("f", (None, 1000), F32), TensorSpec("i", (1000,), np.dtype(np.int32)),
             TensorSpec("b", (1000,), np.dtype(bool)), TensorSpec("h", (1000,), np.dtype(ml_dtypes.bfloat16)),
             TensorSpec("u", (1000,), np.dtype(ml_dtypes.uint4)), TensorSpec("s", (), I64, "sequence"),
             TensorSpec("o", (2,), F32, "optional"), TensorSpec("e", (1000,), np.dtype(ml_dtypes.float8_e4m3fn))]
    a, b, c = random_feeds(specs), random_feeds(specs), random_feeds(specs, seed=1)
    assert a.keys() == {s.name for s in specs}
    np.testing.assert_array_equal(a["f"], b["f"])                     # seeded
    assert not np.array_equal(a["f"], c["f"])
    assert a["f"].shape == (1, 1000) and a["f"].dtype == F32
    assert 0.9 < a["f"].std() < 1.1 and a["f"].min() < -1 and a["h"].astype(np.float32).min() < -1  # normal
    assert a["e"].dtype == ml_dtypes.float8_e4m3fn and a["e"].astype(np.float32).min() < -1
    for name, dt in (("i", np.int32), ("b", bool), ("u", ml_dtypes.uint4)):
        assert a[name].dtype == dt and set(np.unique(a[name].astype(int))) == {0, 1}
        assert 0.4 < a[name].astype(float).mean() < 0.6                  # 0 and 1 equally likely
    assert isinstance(a["s"], list) and len(a["s"]) == 1 and a["s"][0].dtype == I64 and a["s"][0].shape == ()
    assert isinstance(a["o"], np.ndarray) and a["o"].shape == (2,)
    with _raises("cannot make random data for input 'c' of dtype complex64"):
        random_feeds([TensorSpec("c", (1,), np.dtype(np.complex64))])
    with _raises("cannot make random data for input 'v' of dtype void32"):
        random_feeds([TensorSpec("v", (1,), np.dtype("V4"))])


def test_spec_normalize_feeds_messages():
    one, two = [TensorSpec("x", (2,), F32)], [TensorSpec("a", (1,), F32), TensorSpec("b", (1,), F32)]
    x = np.ones(2, np.float32)
    assert normalize_feeds(one, x)["x"] is x
    got = normalize_feeds(one, {"x": [np.float32(1), np.float32(2)]})
    assert type(got["x"]) is np.ndarray and got["x"].dtype == F32
    np.testing.assert_array_equal(normalize_feeds(one, [np.float32(1), np.float32(2)])["x"], [1, 2])  # bare list
    with _raises("model has 2 inputs (a, b); pass a dict of arrays by name"):
        normalize_feeds(two, np.ones(1, np.float32))
    with _raises("missing input 'x' (expected x: float32[2]); given: nothing"):
        normalize_feeds(one, {})
    with _raises("missing input 'b' (expected b: float32[1]); given: ['a']"):
        normalize_feeds(two, {"a": np.ones(1, np.float32)})
    with _raises("unknown input 'z'; the model's inputs are ['x']"):
        normalize_feeds(one, {"x": x, "z": x})


def test_spec_tensor_checks_messages():
    spec = TensorSpec("x", (None, 3, -1), F32)
    good = np.zeros((5, 3, 9), np.float32)
    assert check_value(spec, good) is good
    with _raises("input 'x': expected dtype float32, got float64"):
        check_value(spec, good.astype(np.float64))
    with _raises("input 'x': expected rank 3 (?, 3, -1), got rank 2 (3, 9)"):
        check_value(spec, good[0])
    with _raises("input 'x': dim 1 must be 3, got 4 (expected (?, 3, -1), got (5, 4, 9))"):
        check_value(spec, np.zeros((5, 4, 9), np.float32))
    with _raises("input 'z': dim 0 must be 0, got 2 (expected (0,), got (2,))"):
        check_value(TensorSpec("z", (0,), F32), np.zeros(2, np.float32))
    words = TensorSpec("w", (2,), np.dtype(object))
    assert check_value(words, np.array(["a", "b"])).dtype.kind == "U"      # str arrays for a string tensor
    with _raises("input 'x': expected dtype float32, got object"):
        check_value(spec, None)                                              # None only for an optional


def test_spec_sequence_and_optional_checks():
    seq = TensorSpec("s", (), I64, "sequence")
    got = check_value(seq, ([1, 2], np.array([3], np.int64)))
    assert isinstance(got, list) and [type(v) for v in got] == [np.ndarray, np.ndarray]
    np.testing.assert_array_equal(got[0], [1, 2])
    assert check_value(seq, []) == []
    with _raises("input 's': expected a sequence (list) of arrays (s: sequence(int64[])), got ndarray"):
        check_value(seq, np.arange(3))
    with _raises("input 's': expected a sequence (list) of arrays (s: sequence(int64[])), got int"):
        check_value(seq, 3)
    with _raises("input 's': expected dtype int64, got float32"):
        check_value(seq, [np.ones(2, np.float32)])
    opt = TensorSpec("o", (), F32, "optional")
    assert check_value(opt, None) is None
    assert check_value(TensorSpec("q", (), F32, "optional_sequence"), None) is None
    assert check_value(opt, np.ones((2, 2), np.float32)).shape == (2, 2)   # its shape is not reported: any
    with _raises("input 'o': expected dtype float32, got int64"):
        check_value(opt, np.ones(2, np.int64))
