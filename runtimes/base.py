"""The backend interface: a Backend opens a model file into a Runner that executes it."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.specs import TensorSpec


def read_tagged_json(path: Path, fmt: str, what: str) -> dict:
    """The JSON object in ``path`` whose ``"format"`` is ``fmt``; ModelLoadError naming ``what`` (e.g. "an edgekit
    TVM signature") when the file is not valid JSON, not an object or of another format."""
    from edgekit.errors import ModelLoadError

    try:
        data = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ModelLoadError(f"{path}: not {what} (format={got!r})")
    return data


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


class RenamedRunner(Runner):
    """Presents another runner's tensors under other names, matched by position.

    Converters name tensors as they please (``serving_default_x:0``, ``Identity``): a bundle maps the
    artifact's tensors to the source model's names by their order.
    """

    def __init__(self, inner: Runner, input_names: Sequence[str], output_names: Sequence[str]):
        if len(input_names) != len(inner.inputs) or len(output_names) != len(inner.outputs):
            from edgekit.errors import ModelLoadError

            raise ModelLoadError(
                f"artifact has {len(inner.inputs)} inputs / {len(inner.outputs)} outputs, the manifest names "
                f"{len(input_names)} / {len(output_names)}")
        self._inner = inner
        self.backend = inner.backend
        if getattr(inner, "signatures", None):    # shape buckets, in input order (names do not matter)
            self.signatures = inner.signatures
        self.inputs = [replace(s, name=n) for n, s in zip(input_names, inner.inputs)]
        self.outputs = [replace(s, name=n) for n, s in zip(output_names, inner.outputs)]
        self._in_map = {n: s.name for n, s in zip(input_names, inner.inputs)}
        self._out_map = {s.name: n for n, s in zip(output_names, inner.outputs)}
        self._out_rev = {v: k for k, v in self._out_map.items()}

    def run(self, feeds, output_names):
        inner_feeds = {self._in_map[k]: v for k, v in feeds.items()}
        names = [self._out_rev[n] for n in output_names] if output_names else None
        res = self._inner.run(inner_feeds, names)
        return {self._out_map[k]: v for k, v in res.items()}

    def close(self) -> None:
        self._inner.close()
