"""The backend interface: a Backend opens a model file into a Runner that executes it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.specs import TensorSpec


class Runner:
    """An opened model. ``run`` gets checked feeds (dict by input name) and returns outputs by name."""

    backend: str = ""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources (optional)."""


class Backend:
    """A runtime that can open some model formats. Subclasses register with ``@register``."""

    name: str = ""
    formats: tuple[str, ...] = ()
    #: the edgekit extra that installs this backend's runtime
    extra: str = ""
    description: str = ""

    @functools.cache  # noqa: B019 - backends are singletons
    def unavailable_reason(self) -> str | None:
        """``None`` when the backend can run here, else why not (and what to install)."""
        return self._probe()

    def _probe(self) -> str | None:
        raise NotImplementedError

    def version(self) -> str | None:
        return None

    def open(self, path: Path, **options: Any) -> Runner:
        raise NotImplementedError

    def inspect(self, path: Path) -> dict:
        """Format-level facts (ops histogram, params, opset ...) without running the model."""
        return {}
