"""The facade on ONNX Runtime with I/O types numpy lacks (ml_dtypes bfloat16, float8, int4, int2) and sequences.

Real ONNX Runtime runs of Cast models: float8/bfloat16/int4 values compared exactly (tolerance 0: every value used
is representable, so a packing, nibble-order or byte-order slip changes a value).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto

import edgekit
from edgekit import InputError
from edgekit.specs import TensorSpec, random_feeds

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
