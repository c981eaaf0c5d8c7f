"""``Session``: one opened model on one backend, with checked inputs; safe to share between threads."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import InputError
from .latency import check_budget
from .specs import TensorSpec, normalize_feeds


class ThreadLastRun:
    """``last_run`` per thread: a session shared between threads reports to each the record of its own last call.

    A subclass on a hot path may store a named tuple in ``_thread_local().record``: it becomes a dict when read.
    """

    def _thread_local(self) -> threading.local:
        tls = self.__dict__.get("_tls")
        if tls is None:  # created once (setdefault keeps the first under a race); not on every call
            tls = self.__dict__.setdefault("_tls", threading.local())
        return tls

    @property
    def last_run(self) -> dict | None:
        tls = self._thread_local()
        rec = getattr(tls, "record", None)
        if rec is not None and type(rec) is not dict:  # a compact record (a named tuple): a dict once first read
            rec = tls.record = rec._asdict()
        return rec

    @last_run.setter
    def last_run(self, value: dict | None) -> None:
        self._thread_local().record = value


class Session(ThreadLastRun):
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
        #: the last budgeted call (``run(..., budget_ms=...)``): variant, latency_ms, budget_ms, deadline_met
        self.last_run: dict | None = None
        self._budget_log: deque[tuple[float, bool]] = deque(maxlen=100_000)

    def run(self, feeds: Mapping[str, np.ndarray] | np.ndarray, outputs: Sequence[str] | None = None,
            budget_ms: float | None = None) -> dict[str, np.ndarray]:
        """Run once. ``outputs`` selects output names (default: all).

        With ``budget_ms`` the call is timed and accounted (``last_run``, ``stats()``); a single model has no
        cheaper variant to fall back to: open a bundle with ``edgekit.load(bundle, budget_ms=...)`` for that.
        """
        if budget_ms is not None:
            return self._run_budgeted(feeds, outputs, budget_ms)
        checked = normalize_feeds(self.inputs, feeds)
        if outputs is not None:
            outputs = list(outputs)
            for name in outputs:
                if name not in self._output_set:
                    raise InputError(f"unknown output {name!r}; the model's outputs are "
                                     f"{[s.name for s in self.outputs]}")
        return self._runner.run(checked, outputs)

    def _run_budgeted(self, feeds, outputs, budget_ms) -> dict[str, np.ndarray]:
        import time

        budget = check_budget(budget_ms)
        t0 = time.perf_counter()
        result = self.run(feeds, outputs)
        latency = (time.perf_counter() - t0) * 1e3
        met = latency <= budget
        self._budget_log.append((latency, met))
        self.last_run = {"variant": self.variant, "latency_ms": latency, "budget_ms": budget, "deadline_met": met}
        return result

    @property
    def shape_choices(self) -> list[list[tuple[int, ...]]] | None:
        """For a model that runs only at a few static shapes (TFLite signatures per sequence length): the input
        shapes of each, in input order; None when the inputs' specs say it all."""
        sigs = getattr(self._runner, "signatures", None)
        return [list(v) for v in sigs.values()] if sigs else None

    def stats(self) -> dict:
        """Budgeted calls so far: calls, misses and latency percentiles."""
        from .bench import percentiles

        log = list(self._budget_log)
        row = {"calls": len(log), "misses": sum(not met for _, met in log)}
        if log:
            p = percentiles(np.array([ms for ms, _ in log]))
            row.update({k: p[k] for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")})
        return {"calls": row["calls"], "misses": row["misses"], "switches": 0,
                "variants": {self.variant or self.format or "model": row}}

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
