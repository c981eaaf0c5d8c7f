"""Knobs inside a model run: pick the largest setting (diffusion steps, sequence length, resolution) that fits.

A :class:`KnobController` learns a cost model ``latency = a + b * knob**p`` (``a, b >= 0``; ``p`` fitted over
0.5..3 by least squares, or fixed) from timed runs, per knob value on the recent ``quantile`` of its
samples (so it follows a device that slows down), and answers "the largest setting whose predicted latency
fits the remaining budget". :class:`Deadline` tracks that remaining budget inside a run.

Typical use in an app::

    ctl = KnobController([64, 128, 256, 384], name="seq_len")
    ctl.calibrate(lambda n: model.run(tokens(n)))          # times the smallest and largest settings
    n = ctl.choose(budget_ms=30)                            # largest seq_len predicted to fit 30 ms
    with ctl.timed(n):
        model.run(tokens(n))                                # the measurement refines the model

    deadline = Deadline(200)                                # a multi-step run (e.g. diffusion)
    steps = step_ctl.choose(deadline.remaining_ms())
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .errors import InputError
from .latency import check_budget

_POWERS = np.round(np.arange(0.5, 3.0001, 0.05), 2)


class Deadline:
    """A budget started now: ``remaining_ms()`` is what is left of it (never below 0)."""

    def __init__(self, budget_ms: float):
        self.budget_ms = check_budget(budget_ms)
        self._t0 = time.perf_counter()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._t0) * 1e3

    def remaining_ms(self) -> float:
        return max(self.budget_ms - self.elapsed_ms(), 0.0)

    def expired(self) -> bool:
        return self.remaining_ms() <= 0.0


class KnobController:
    """Learn latency vs a knob from measurements; choose the largest setting that fits a budget.

    - ``choices``: the allowed settings (numbers > 0), e.g. ``[10, 20, 30, 50]`` diffusion steps.
    - ``power``: fix the exponent ``p`` of the cost model (e.g. 2 for image side length), or fit it (None).
    - ``quantile``: the per-setting quantile of recent samples the model fits (0.9: plan for slow calls).
    - ``safety``: choose settings predicted to take at most ``safety * budget``.
    - ``window``: samples kept per setting (older ones are forgotten, so the model tracks the device).
    """

    def __init__(self, choices: Sequence[float], name: str = "knob", power: float | None = None,
                 quantile: float = 0.9, safety: float = 0.9, window: int = 16):
        vals = sorted({float(c) for c in choices})
        if not vals or vals[0] <= 0:
            raise InputError(f"{name}: choices must be numbers > 0, got {list(choices)!r}")
        if not 0 < safety <= 1:
            raise InputError(f"{name}: safety must be in (0, 1], got {safety!r}")
        self.choices = [int(c) if float(c).is_integer() else c for c in vals]
        self.name, self.power, self.quantile, self.safety = name, power, quantile, safety
        self._samples: dict[float, deque[float]] = {}
        self._window = window
        self.coef: tuple[float, float, float] | None = None  # (a, b, p)

    # -- measurements -----------------------------------------------------------------------------
    def observe(self, value: float, latency_ms: float) -> None:
        """Record that setting ``value`` took ``latency_ms``."""
        if not (isinstance(latency_ms, (int, float)) and math.isfinite(latency_ms) and latency_ms >= 0):
            raise InputError(f"{self.name}: latency must be a finite number >= 0 ms, got {latency_ms!r}")
        self._samples.setdefault(float(value), deque(maxlen=self._window)).append(float(latency_ms))
        self.coef = None

    @contextlib.contextmanager
    def timed(self, value: float) -> Iterator[None]:
        """``with ctl.timed(n): run(n)`` records the block's wall time for setting ``n``."""
        t0 = time.perf_counter()
        yield
        self.observe(value, (time.perf_counter() - t0) * 1e3)

    def calibrate(self, run: Callable[[float], object], values: Sequence[float] | None = None,
                  repeats: int = 3, warmup: int = 1) -> None:
        """Time ``run(value)`` for ``values`` (default: smallest, middle and largest choice)."""
        if values is None:
            c = self.choices
            values = sorted({c[0], c[len(c) // 2], c[-1]})
        for v in values:
            for _ in range(warmup):
                run(v)
            for _ in range(repeats):
                with self.timed(v):
                    run(v)

    # -- model ------------------------------------------------------------------------------------
    def _fit(self) -> tuple[float, float, float]:
        if self.coef is not None:
            return self.coef
        if not self._samples:
            raise InputError(f"{self.name}: no measurements yet (call observe(), timed() or calibrate())")
        xs = np.array(sorted(self._samples))
        ys = np.array([np.quantile(self._samples[x], self.quantile) for x in xs])
        if len(xs) == 1:  # one setting seen: assume cost proportional to the knob
            p = self.power if self.power is not None else 1.0
            self.coef = (0.0, float(ys[0] / xs[0] ** p), p)
            return self.coef
        best = None
        for p in ([self.power] if self.power is not None else _POWERS):
            a, b = _nonneg_line(xs ** p, ys)
            err = float(np.sum((a + b * xs ** p - ys) ** 2))
            if best is None or err < best[0]:
                best = (err, a, b, float(p))
        self.coef = best[1:]
        return self.coef

    def predict(self, value: float) -> float:
        """Predicted latency (ms) of setting ``value``."""
        a, b, p = self._fit()
        return a + b * float(value) ** p

    def choose(self, budget_ms: float) -> float:
        """The largest choice predicted to take at most ``safety * budget_ms``; else the smallest choice."""
        budget = check_budget(budget_ms) if budget_ms != 0 else 0.0
        fits = [c for c in self.choices if self.predict(c) <= self.safety * budget]
        return fits[-1] if fits else self.choices[0]

    def fits(self, value: float, budget_ms: float) -> bool:
        return self.predict(value) <= self.safety * budget_ms

    def __repr__(self) -> str:
        if self._samples:
            a, b, p = self._fit()
            return f"<KnobController {self.name}: {a:.3g} + {b:.3g} * {self.name}^{p:g} ms>"
        return f"<KnobController {self.name}: not measured>"


def _nonneg_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares ``y = a + b x`` with ``a, b >= 0``."""
    A = np.stack([np.ones_like(x), x], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
    if a >= 0 and b >= 0:
        return float(a), float(b)
    cands = [(0.0, max(float(np.dot(x, y) / np.dot(x, x)), 0.0)), (max(float(y.mean()), 0.0), 0.0)]
    return min(cands, key=lambda ab: float(np.sum((ab[0] + ab[1] * x - y) ** 2)))
