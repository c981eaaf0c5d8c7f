"""ONNX Runtime I/O of the element types numpy lacks (bfloat16, float8, int4/uint4, int2/uint2) as ``ml_dtypes`` arrays.

ONNX Runtime's Python API takes and returns numpy arrays of numpy's own types only. A tensor of another type goes
in as an ``OrtValue`` holding its bits (sub-byte types packed, first element in the low bits, as ONNX stores them)
and comes out as the raw bytes of the output ``OrtValue``, unpacked and viewed as the ml_dtypes type.
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np

#: ONNX Runtime element type name -> (ml_dtypes attribute, ONNX TensorProto enum, bits per element)
EXTRA_TYPES = {
    "bfloat16": ("bfloat16", 16, 16),
    "float8e4m3fn": ("float8_e4m3fn", 17, 8),
    "float8e4m3fnuz": ("float8_e4m3fnuz", 18, 8),
    "float8e5m2": ("float8_e5m2", 19, 8),
    "float8e5m2fnuz": ("float8_e5m2fnuz", 20, 8),
    "uint4": ("uint4", 21, 4),
    "int4": ("int4", 22, 4),
    "float4e2m1": ("float4_e2m1fn", 23, 4),
    "float8e8m0": ("float8_e8m0fnu", 24, 8),
    "uint2": ("uint2", 25, 2),
    "int2": ("int2", 26, 2),
}


@cache
def _by_dtype() -> dict[np.dtype, tuple[int, int]]:
    import ml_dtypes

    return {np.dtype(getattr(ml_dtypes, attr)): (enum, bits) for attr, enum, bits in EXTRA_TYPES.values()}


def extra_dtype(ort_name: str) -> np.dtype | None:
    """The ml_dtypes dtype of an ONNX Runtime element type name (``bfloat16``, ``int4`` ...), None for others."""
    entry = EXTRA_TYPES.get(ort_name)
    if entry is None:
        return None
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, entry[0]))


def is_extra(dtype: np.dtype) -> bool:
    """True for a dtype that ONNX Runtime's numpy binding cannot take or return."""
    return dtype.num >= 256 and dtype in _by_dtype()  # numpy's own types are numbered below 256


def to_ortvalue(value: np.ndarray):
    """An ``OrtValue`` holding ``value`` (an ml_dtypes array) with its ONNX element type; the data is copied."""
    import onnxruntime as ort

    enum, bits = _by_dtype()[value.dtype]
    raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
    if bits < 8:
        per = 8 // bits
        lanes = np.zeros(-raw.size % per + raw.size, np.uint8)
        lanes[: raw.size] = raw & ((1 << bits) - 1)
        lanes = lanes.reshape(-1, per)
        raw = np.zeros(lanes.shape[0], np.uint8)
        for k in range(per):
            raw |= lanes[:, k] << np.uint8(bits * k)
    ov = ort.OrtValue.ortvalue_from_shape_and_type(list(value.shape), enum)
    if ov.tensor_size_in_bytes() != raw.nbytes:
        raise ValueError(f"{value.dtype.name}{list(value.shape)}: {raw.nbytes} bytes, ONNX Runtime expects "
                         f"{ov.tensor_size_in_bytes()}")
    if raw.nbytes:
        ctypes.memmove(ov.data_ptr(), raw.ctypes.data, raw.nbytes)
    return ov


def from_ortvalue(ov, dtype: np.dtype) -> np.ndarray:
    """The tensor in ``ov`` (of an extra element type) as a numpy array of the ml_dtypes ``dtype``."""
    shape = tuple(ov.shape())
    bits = _by_dtype()[dtype][1]
    nbytes = ov.tensor_size_in_bytes()
    raw = np.frombuffer(ctypes.string_at(ov.data_ptr(), nbytes), np.uint8) if nbytes else np.zeros(0, np.uint8)
    if bits < 8:
        per = 8 // bits
        mask = np.uint8((1 << bits) - 1)
        raw = np.stack([(raw >> np.uint8(bits * k)) & mask for k in range(per)], axis=1).reshape(-1)
    count = int(np.prod(shape, dtype=np.int64))
    return raw[: count * dtype.itemsize].copy().view(dtype).reshape(shape)
