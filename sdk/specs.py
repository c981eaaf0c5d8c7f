"""Tensor specifications (name, shape with dynamic dims, numpy dtype, tensor/sequence/optional) and input checking.

Dtypes numpy lacks (bfloat16, float8, int4/uint4, int2/uint2) are ``ml_dtypes`` dtypes, named as ml_dtypes names them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

Dim = int | str | None


def as_dtype(name) -> np.dtype:
    """``np.dtype(name)``, also for the ml_dtypes names (``bfloat16``, ``float8_e4m3fn``, ``int4`` ...)."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, str(name)))


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model; a dynamic dim is ``None`` or a symbolic name.

    ``kind``: "tensor", "sequence" (a list of tensors), "optional" (a tensor or None) or "optional_sequence".
    For a sequence ``shape`` and ``dtype`` are its elements' (ONNX Runtime reports no element shape: ``()``).
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype
    kind: str = "tensor"

    def to_json(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": np.dtype(self.dtype).name}
        if self.kind != "tensor":
            d["kind"] = self.kind
        return d

    @classmethod
    def from_json(cls, d: Mapping) -> TensorSpec:
        return cls(str(d["name"]), tuple(d["shape"]), as_dtype(d["dtype"]), str(d.get("kind", "tensor")))

    def concrete_shape(self, fill: int = 1) -> tuple[int, ...]:
        """The shape with every dynamic dim replaced by ``fill``."""
        return tuple(d if isinstance(d, int) and d >= 0 else fill for d in self.shape)

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        text = f"{np.dtype(self.dtype).name}[{dims}]"
        if self.kind.endswith("sequence"):
            text = f"sequence({text})"
        if self.kind.startswith("optional"):
            text = f"optional({text})"
        return f"{self.name}: {text}"


def random_feeds(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the right shape and dtype (dynamic dims set to 1)."""
    rng = np.random.default_rng(seed)
    feeds: dict = {}
    for spec in specs:
        value = _random_tensor(spec, rng)
        feeds[spec.name] = [value] if spec.kind.endswith("sequence") else value
    return feeds


def _random_tensor(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    shape = spec.concrete_shape()
    dt = np.dtype(spec.dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dt.kind in "iu" or (dt.kind == "V" and "int" in dt.name):  # ml_dtypes int4/uint4/int2/uint2 too
        return rng.integers(0, 2, size=shape).astype(dt)
    if dt.kind == "f" or (dt.kind == "V" and dt.name.startswith(("bfloat", "float"))):
        return rng.standard_normal(shape).astype(dt)
    raise InputError(f"cannot make random data for input {spec.name!r} of dtype {dt.name}")


def normalize_feeds(specs: Sequence[TensorSpec], feeds) -> dict[str, np.ndarray]:
    """Check ``feeds`` against ``specs``; a bare array is accepted for a one-input model."""
    if isinstance(feeds, np.ndarray) or not isinstance(feeds, Mapping):
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise InputError(f"model has {len(specs)} inputs ({names}); pass a dict of arrays by name")
        feeds = {specs[0].name: feeds}
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        try:
            value = feeds[spec.name]
        except KeyError:
            raise InputError(
                f"missing input {spec.name!r} (expected {spec}); given: {sorted(feeds) or 'nothing'}"
            ) from None
        out[spec.name] = check_value(spec, value)
    if len(feeds) != len(out):
        unknown = sorted(set(feeds) - set(out))
        raise InputError(f"unknown input {unknown[0]!r}; the model's inputs are {[s.name for s in specs]}")
    return out


def check_value(spec: TensorSpec, value):
    """``value`` checked against ``spec``: an array, a list of arrays for a sequence, None for an empty optional."""
    if value is None and spec.kind.startswith("optional"):
        return None
    if spec.kind.endswith("sequence"):
        if isinstance(value, np.ndarray) or not isinstance(value, Sequence):
            raise InputError(f"input {spec.name!r}: expected a sequence (list) of arrays ({spec}), "
                             f"got {type(value).__name__}")
        items = [v if type(v) is np.ndarray else np.asarray(v) for v in value]
        for item in items:  # element shapes are free: ONNX Runtime reports none for sequences
            _check_dtype(spec, item)
        return items
    if type(value) is not np.ndarray:
        value = np.asarray(value)
    if spec.kind == "optional":  # its shape is not reported
        _check_dtype(spec, value)
    else:
        check_tensor(spec, value)
    return value


def check_tensor(spec: TensorSpec, value: np.ndarray) -> None:
    """Raise :class:`InputError` if ``value`` does not fit ``spec`` (rank, static dims, dtype)."""
    _check_dtype(spec, value)
    if value.ndim != len(spec.shape):
        raise InputError(
            f"input {spec.name!r}: expected rank {len(spec.shape)} {_fmt(spec.shape)}, "
            f"got rank {value.ndim} {tuple(value.shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
        if isinstance(want, int) and want >= 0 and want != got:
            raise InputError(
                f"input {spec.name!r}: dim {axis} must be {want}, got {got} "
                f"(expected {_fmt(spec.shape)}, got {tuple(value.shape)})"
            )


def _check_dtype(spec: TensorSpec, value: np.ndarray) -> None:
    if value.dtype != spec.dtype and not (spec.dtype.kind in "OU" and value.dtype.kind in "OU"):
        raise InputError(
            f"input {spec.name!r}: expected dtype {np.dtype(spec.dtype).name}, got {value.dtype.name}"
        )


def _fmt(shape: tuple[Dim, ...]) -> str:
    dims = ", ".join("?" if d is None else str(d) for d in shape)
    return f"({dims},)" if len(shape) == 1 else f"({dims})"    # as Python writes the given shape
