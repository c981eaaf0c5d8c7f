"""Tensor specifications (name, shape with dynamic dims, numpy dtype) and input checking."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model; a dynamic dim is ``None`` or a symbolic name."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": np.dtype(self.dtype).name}

    @classmethod
    def from_json(cls, d: Mapping) -> TensorSpec:
        return cls(str(d["name"]), tuple(d["shape"]), np.dtype(d["dtype"]))

    def concrete_shape(self, fill: int = 1) -> tuple[int, ...]:
        """The shape with every dynamic dim replaced by ``fill``."""
        return tuple(d if isinstance(d, int) and d >= 0 else fill for d in self.shape)

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name}[{dims}]"


def random_feeds(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the right shape and dtype (dynamic dims set to 1)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = spec.concrete_shape()
        dt = np.dtype(spec.dtype)
        if dt.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(dt)
        elif dt.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise InputError(f"cannot make random data for input {spec.name!r} of dtype {dt.name}")
    return feeds


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
        if type(value) is not np.ndarray:
            value = np.asarray(value)
        check_tensor(spec, value)
        out[spec.name] = value
    if len(feeds) != len(out):
        unknown = sorted(set(feeds) - set(out))
        raise InputError(f"unknown input {unknown[0]!r}; the model's inputs are {[s.name for s in specs]}")
    return out


def check_tensor(spec: TensorSpec, value: np.ndarray) -> None:
    """Raise :class:`InputError` if ``value`` does not fit ``spec`` (rank, static dims, dtype)."""
    if value.dtype != spec.dtype and not (spec.dtype.kind in "OU" and value.dtype.kind in "OU"):
        raise InputError(
            f"input {spec.name!r}: expected dtype {np.dtype(spec.dtype).name}, got {value.dtype.name}"
        )
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


def _fmt(shape: tuple[Dim, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
