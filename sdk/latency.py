"""Online latency model and variant choice for budgeted runs.

Every variant keeps a sliding window of its latencies since it was last chosen, held sorted (insertion and
eviction by bisection), so a tail quantile costs O(1) to read and a call costs microseconds. A device-wide
*load factor* (the median, over the last few calls of any variant, of observed latency / that variant's
unloaded median) tells how much slower the device is now than when it was profiled (thermal throttling,
other processes). Variants do not all slow down alike (a big matmul suffers more from a lost core than a
small one), so each variant also learns a *correction* from its probes and its first runs after an upgrade
(when the load factor is settled): how far its latency strays from the uniform scaling.

Prediction of a variant's tail latency: for the variant in use, the ``quantile`` of its samples since it was
chosen (once there are ``min_samples``; before that, the larger of its scaled profile and the median of
its samples so far); for any other, its profiled median x load factor x correction, plus the device's
current tail excess (quantile minus median of the variant in use: preemption adds time, it does not
multiply it).

Choice: the most accurate variant whose predicted tail fits the budget. Moving *down* (to a faster variant)
is immediate once the current one is predicted to miss, or after two misses in a row, but only to a variant
predicted faster by more than the noise (``hysteresis``: a relative difference): two variants of nearly
equal speed miss alike, so trading one for the other only flaps. Moving *up* needs a margin (the better
variant must be predicted to fit ``budget * (1 - margin)``) and a minimum dwell on the current variant; an
upgrade that fails soon after doubles the dwell (up to 8x). Every ``probe_every`` calls one other variant
predicted to fit (with the margin) is run once, so its correction stays current.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from .errors import InputError


def check_budget(budget_ms: Any, what: str = "budget_ms") -> float:
    """A budget must be a finite number > 0 (milliseconds); anything else is an :class:`InputError`."""
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, Real):
        raise InputError(f"{what} must be a number of milliseconds > 0, got {budget_ms!r}")
    value = float(budget_ms)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{what} must be a finite number of milliseconds > 0, got {budget_ms!r}")
    return value


@dataclass
class Decision:
    """What :meth:`LatencyModel.choose` picked for one call."""

    variant: str
    predicted_ms: float
    fits: bool
    probe: bool = False


class SortedWindow:
    """The last ``size`` values in arrival order, also kept sorted: add in O(log n) search, quantiles in O(1)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = size
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []

    def add(self, value: float) -> None:
        if len(self._fifo) == self.size:
            del self._sorted[bisect_left(self._sorted, self._fifo.popleft())]
        self._fifo.append(value)
        insort(self._sorted, value)

    def clear(self) -> None:
        self._fifo.clear()
        self._sorted.clear()

    def quantile(self, q: float) -> float:
        """Linear interpolation between closest ranks (numpy's default method); the window must not be empty."""
        s = self._sorted
        pos = q * (len(s) - 1)
        lo = int(pos)
        if lo + 1 >= len(s):
            return s[-1]
        return s[lo] + (s[lo + 1] - s[lo]) * (pos - lo)

    def __len__(self) -> int:
        return len(self._fifo)


class LatencyWindow(SortedWindow):
    """One variant's latencies since it was last chosen, and the call index of its latest run (for probes)."""

    def __init__(self, size: int = 32):
        super().__init__(size)
        self.last_call: int | None = None

    def record(self, call: int, ms: float) -> None:
        self.add(float(ms))
        self.last_call = call


def tail_key(quantile: float) -> str:
    """The profile key (``p50_ms``/``p90_ms``/``p95_ms``/``p99_ms``) closest to ``quantile``."""
    keys = {0.5: "p50_ms", 0.9: "p90_ms", 0.95: "p95_ms", 0.99: "p99_ms"}
    return keys[min(keys, key=lambda q: abs(q - quantile))]


class LatencyModel:
    """Per-variant latency windows plus the choice policy described in the module docstring.

    ``order``: variant ids, most accurate first. ``baseline``: per id, unloaded figures from the profile
    (``p50_ms`` and the tail key of ``quantile``). The model is not thread-safe; the caller locks.
    """

    def __init__(self, order: Sequence[str], baseline: Mapping[str, Mapping[str, float]], quantile: float = 0.95,
                 window: int = 32, horizon: int = 200, min_samples: int = 4, margin: float = 0.15,
                 dwell: int = 20, probe_every: int = 50, load_window: int = 8, learn_rate: float = 0.5,
                 hysteresis: float = 0.1):
        if not order:
            raise ValueError("LatencyModel needs at least one variant")
        if not 0.5 <= quantile < 1.0:
            raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
        self.order = list(order)
        self._rank = {v: i for i, v in enumerate(self.order)}
        self.quantile = quantile
        self._tail_key = tail_key(quantile)
        self.base_p50 = {v: max(float(baseline[v]["p50_ms"]), 1e-6) for v in self.order}
        self.base_tail = {v: max(float(baseline[v].get(self._tail_key, baseline[v]["p50_ms"])), self.base_p50[v])
                          for v in self.order}
        self._base_excess = min(self.base_tail[v] - self.base_p50[v] for v in self.order)
        self.windows = {v: LatencyWindow(window) for v in self.order}
        # per variant: its log correction as learned, and the call index it was learned at; it fades by ``_fade``
        # per call since, applied when read (no call touches the corrections of variants it did not run)
        self._learned: dict[str, tuple[float, int]] = dict.fromkeys(self.order, (0.0, 0))
        self._corr_load = dict.fromkeys(self.order, 1.0)  # the load factor each correction was learned at
        self.horizon, self.min_samples, self.margin, self.learn_rate = horizon, min_samples, margin, learn_rate
        self.hysteresis = hysteresis
        self._fade = 1.0 - 1.0 / (2 * horizon)
        self.base_dwell, self.dwell, self.probe_every = dwell, dwell, probe_every
        self._ratios = SortedWindow(load_window)
        self.calls = 0
        self.current: str | None = None
        self.switches = 0
        self.probes = 0
        self._switched_at = 0
        self._since_switch = 0
        self._last_upgrade_call: int | None = None
        self._miss_streak = 0

    # -- prediction -------------------------------------------------------------------------------
    def load_factor(self) -> float:
        """How much slower than profiled the device runs now (1.0 = as profiled)."""
        if not self._ratios:
            return 1.0
        return min(max(self._ratios.quantile(0.5), 0.05), 1e4)

    def _log_corr(self, vid: str) -> float:
        """The log correction of ``vid`` now: as learned, faded back towards 0 by ``_fade`` per call since."""
        value, at = self._learned[vid]
        return value * self._fade ** (self.calls - at) if value else 0.0

    @property
    def log_corr(self) -> dict[str, float]:
        """Per variant, its log correction now (a read-only copy)."""
        return {v: self._log_corr(v) for v in self.order}

    def correction(self, vid: str, load: float | None = None) -> float:
        """How much slower ``vid`` runs than the load factor alone predicts (learned from its trials).

        A slowdown learned at one load factor is not counted twice: as far as the load factor has risen since,
        it already explains the slowdown (a probe that met a heavier input first, before the variant in use did).
        """
        if not self._learned[vid][0]:
            return 1.0
        corr = math.exp(self._log_corr(vid))
        if corr <= 1.0:
            return corr
        load = self.load_factor() if load is None else load
        return min(corr, max(1.0, corr * self._corr_load[vid] / load))

    def jitter(self) -> float:
        """The device's current tail excess (ms): quantile minus median of the variant in use.

        Preemption and interrupts add time rather than multiply it, so a variant's tail is predicted as its
        scaled median plus this excess. Before the variant in use has ``min_samples`` samples, the profile's
        smallest tail excess is used.
        """
        cur = self.current
        if cur is not None:
            own = self.windows[cur]
            if len(own) >= self.min_samples:
                return max(own.quantile(self.quantile) - own.quantile(0.5), 0.0)
        return self._base_excess

    def _own_tail(self, own: SortedWindow) -> float:
        """The tail (``quantile``) of the samples of the variant in use: what the budget is compared with."""
        return own.quantile(self.quantile)

    def _scaled(self, vid: str, load: float, jitter: float) -> float:
        median = self.base_p50[vid] * load * self.correction(vid, load)
        # the excess is capped at the median itself: right after a change of load the window of the variant in
        # use mixes two levels, and that step is not jitter
        return median + min(jitter, median)

    def _predict(self, vid: str, load: float, jitter: float) -> float:
        if vid == self.current:
            own = self.windows[vid]
            if len(own) >= self.min_samples:
                return self._own_tail(own)
            scaled = self._scaled(vid, load, jitter)
            return max(scaled, own.quantile(0.5)) if len(own) else scaled
        return self._scaled(vid, load, jitter)

    def predict(self, vid: str) -> float:
        """Predicted tail latency (ms) of ``vid`` at the current load."""
        return self._predict(vid, self.load_factor(), self.jitter())

    def predictions(self) -> dict[str, float]:
        load, jitter = self.load_factor(), self.jitter()
        return {v: self._predict(v, load, jitter) for v in self.order}

    # -- choice -----------------------------------------------------------------------------------
    def _target(self, preds: Mapping[str, float], budget_ms: float) -> tuple[str, bool]:
        """The variant the rules pick (before hysteresis) and whether it is predicted to fit."""
        cur = self.current
        cur_rank = self._rank[cur] if cur is not None else len(self.order)
        for rank, v in enumerate(self.order):
            if cur is not None and rank < cur_rank:  # an upgrade: margin and dwell
                if preds[v] <= budget_ms * (1.0 - self.margin) and self._since_switch >= self.dwell:
                    return v, True
            elif preds[v] <= budget_ms and not (v == cur and self._miss_streak >= 2):
                return v, True
        return min(self.order, key=preds.__getitem__), False  # nothing fits: the fastest by prediction

    def choose(self, budget_ms: float) -> Decision:
        """The variant to run next under ``budget_ms`` (see the module docstring for the rules)."""
        steady = self._steady(budget_ms)
        if steady is not None and not (self.probe_every and self.calls and self.calls % self.probe_every == 0):
            if self._since_switch >= 4 * self.dwell:
                self.dwell = self.base_dwell
            return Decision(self.current, steady, True)
        load, jitter = self.load_factor(), self.jitter()
        preds = {v: self._predict(v, load, jitter) for v in self.order}
        cur = self.current
        target, fits = self._target(preds, budget_ms)
        if cur is not None and self._rank[target] > self._rank[cur] and \
                self._scaled(target, load, jitter) > (1.0 - self.hysteresis) * self._scaled(cur, load, jitter):
            # on the same footing (profile x load x correction) not faster beyond the noise: a move only flaps
            target, fits = cur, preds[cur] <= budget_ms
        if target != cur:
            self._switch(target)
            preds[target] = self.predict(target)
        elif self._since_switch >= 4 * self.dwell:
            self.dwell = self.base_dwell  # stable for long: forget earlier back-offs
        if self.probe_every and self.calls and self.calls % self.probe_every == 0 and len(self.order) > 1:
            probe = self._pick_probe(preds, budget_ms)
            if probe is not None:
                self.probes += 1
                return Decision(probe, preds[probe], True, probe=True)
        return Decision(target, preds[target], fits)

    def _steady(self, budget_ms: float) -> float | None:
        """The common case in O(1): the variant in use fits on its own samples and no upgrade is due (it is the
        most accurate, or its dwell has not passed), so the rules keep it: its predicted tail; else None."""
        cur = self.current
        if cur is None or self._miss_streak >= 2 or (self._since_switch >= self.dwell and self._rank[cur]):
            return None
        own = self.windows[cur]
        if len(own) < self.min_samples:
            return None
        pred = self._own_tail(own)
        return pred if pred <= budget_ms else None

    def _switch(self, target: str) -> None:
        cur = self.current
        if cur is not None:
            self.switches += 1
            upgrade = self._rank[target] < self._rank[cur]
            if not upgrade and self._last_upgrade_call is not None and \
                    self.calls - self._last_upgrade_call <= 2 * self.dwell:
                self.dwell = min(self.dwell * 2, self.base_dwell * 8)  # failed upgrade: back off
            self._last_upgrade_call = self.calls if upgrade else None
        self.current = target
        self.windows[target].clear()  # its tail is judged on samples since it was chosen
        self._switched_at = self.calls
        self._since_switch = 0
        self._miss_streak = 0

    def _pick_probe(self, preds: Mapping[str, float], budget_ms: float) -> str | None:
        """The stalest other variant predicted to fit the budget (with the margin for slower ones), if any."""
        cur_rank = self._rank[self.current]
        others = [v for i, v in enumerate(self.order) if v != self.current
                  and preds[v] <= budget_ms * ((1.0 - self.margin) if i < cur_rank else 1.0)]
        if not others:
            return None
        return min(others, key=lambda v: (self.windows[v].last_call if self.windows[v].last_call is not None
                                          else -math.inf))

    def observe(self, vid: str, latency_ms: float, budget_ms: float, probe: bool = False) -> None:
        """Record one run of ``vid``."""
        latency_ms = float(latency_ms)
        # learn how far a variant strays from uniform scaling only while the load factor is settled: on probes
        # and right after an upgrade (both follow a dwell); after a downgrade the load has just changed
        trial = probe or (vid == self.current and self.calls - self._switched_at < self.min_samples
                          and self._last_upgrade_call == self._switched_at)
        if trial:
            load = self.load_factor()
            seen = math.log(max(latency_ms, 1e-6) / (self.base_p50[vid] * load))
            # slower than thought: believe it at once (a miss is expensive); faster: move halfway
            now = self._log_corr(vid)
            rate = 1.0 if seen > now else self.learn_rate
            self._learned[vid] = (now + rate * (seen - now), self.calls)
            self._corr_load[vid] = load
        self.windows[vid].record(self.calls, latency_ms)
        # counting the call first fades every correction by one step (they fade back towards 1 unless renewed,
        # over a few horizons), so this call's ratio uses its variant's correction after the fade
        self.calls += 1
        self._ratios.add(latency_ms / (self.base_p50[vid] * self.correction(vid)))
        if not probe:
            self._since_switch += 1
            self._miss_streak = self._miss_streak + 1 if latency_ms > budget_ms else 0
