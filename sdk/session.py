"""``Session``: one opened model on one backend, with checked inputs; safe to share between threads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import InputError
from .specs import TensorSpec, normalize_feeds


class Session:
    """Run a model: ``session.run({"x": array})`` -> ``{"y": array}``.

    Inputs are checked (names, rank, static dims, dtype) before the backend sees them.
    """

    def __init__(self, runner, path: Path | None = None, fmt: str = "", variant: str | None = None):
        self._runner = runner
        self.path = path
        self.format = fmt
        self.variant = variant
        self.backend: str = runner.backend
        self.inputs: list[TensorSpec] = list(runner.inputs)
        self.outputs: list[TensorSpec] = list(runner.outputs)
        self._output_set = frozenset(s.name for s in self.outputs)

    def run(self, feeds: Mapping[str, np.ndarray] | np.ndarray, outputs: Sequence[str] | None = None
            ) -> dict[str, np.ndarray]:
        """Run once. ``outputs`` selects output names (default: all)."""
        checked = normalize_feeds(self.inputs, feeds)
        if outputs is not None:
            outputs = list(outputs)
            for name in outputs:
                if name not in self._output_set:
                    raise InputError(f"unknown output {name!r}; the model's outputs are "
                                     f"{[s.name for s in self.outputs]}")
        return self._runner.run(checked, outputs)

    def close(self) -> None:
        """Release the backend's native resources."""
        self._runner.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.inputs)
        outs = ", ".join(str(s) for s in self.outputs)
        return f"<edgekit.Session {self.format}/{self.backend} ({ins}) -> ({outs})>"
