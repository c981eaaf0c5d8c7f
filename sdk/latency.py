"""Online latency model and variant choice for budgeted runs.

Every variant keeps a sliding window of its recent latencies. A device-wide *load factor* (the median,
over the last few calls of any variant, of observed latency / that variant's unloaded median) tells how
much slower the device is now than when it was profiled (thermal throttling, other processes). Variants do
not all slow down alike (a big matmul suffers more from a lost core than a small one), so each variant also
learns a *correction* from its trial runs and probes: how far its latency strays from the uniform scaling.

Prediction of a variant's tail latency: for the variant in use, the ``quantile`` of its samples since it was
chosen (once there are ``min_samples``; before that, the larger of its scaled profile and the median of
its samples so far); for any other, its profiled median x load factor x correction, plus the device's
current tail excess (quantile minus median of the variant in use: preemption adds time, it does not
multiply it).

Choice: the most accurate variant whose predicted tail fits the budget. Moving *down* (to a faster variant)
is immediate once the current one is predicted to miss, or after two misses in a row. Moving *up* needs a
margin (the better variant must be predicted to fit ``budget * (1 - margin)``) and a minimum dwell on the
current variant; an upgrade that fails soon after doubles the dwell (up to 8x), so the choice does not flap.
Every ``probe_every`` calls one other variant predicted to fit (with the margin) is run once, so its
correction stays current.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Decision:
    """What :meth:`LatencyModel.choose` picked for one call."""

    variant: str
    predicted_ms: float
    fits: bool
    probe: bool = False


class LatencyWindow:
    """The last ``size`` latencies of one variant, each stamped with the call index it was taken at."""

    def __init__(self, size: int = 32):
        self._samples: deque[tuple[int, float]] = deque(maxlen=size)

    def add(self, call: int, ms: float) -> None:
        self._samples.append((call, float(ms)))

    def fresh(self, now: int, horizon: int) -> list[float]:
        """Latencies taken within the last ``horizon`` calls."""
        return [ms for c, ms in self._samples if now - c <= horizon]

    @property
    def last_call(self) -> int | None:
        return self._samples[-1][0] if self._samples else None

    def __len__(self) -> int:
        return len(self._samples)


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
                 dwell: int = 20, probe_every: int = 50, load_window: int = 8, learn_rate: float = 0.5):
        if not order:
            raise ValueError("LatencyModel needs at least one variant")
        if not 0.5 <= quantile < 1.0:
            raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
        self.order = list(order)
        self.quantile = quantile
        self._tail_key = tail_key(quantile)
        self.base_p50 = {v: max(float(baseline[v]["p50_ms"]), 1e-6) for v in self.order}
        self.base_tail = {v: max(float(baseline[v].get(self._tail_key, baseline[v]["p50_ms"])), self.base_p50[v])
                          for v in self.order}
        self.windows = {v: LatencyWindow(window) for v in self.order}
        self.log_corr = dict.fromkeys(self.order, 0.0)
        self.horizon, self.min_samples, self.margin, self.learn_rate = horizon, min_samples, margin, learn_rate
        self.base_dwell, self.dwell, self.probe_every = dwell, dwell, probe_every
        self._ratios: deque[float] = deque(maxlen=load_window)
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
        return float(min(max(np.median(self._ratios), 0.05), 1e4))

    def correction(self, vid: str) -> float:
        """How much slower ``vid`` runs than the load factor alone predicts (learned from its trials)."""
        return math.exp(self.log_corr[vid])

    def jitter(self) -> float:
        """The device's current tail excess (ms): quantile minus median of the variant in use.

        Preemption and interrupts add time rather than multiply it, so a variant's tail is predicted as its
        scaled median plus this excess. Before the variant in use has ``min_samples`` samples, the profile's
        smallest tail excess is used.
        """
        cur = self.current
        if cur is not None:
            own = self.windows[cur].fresh(self.calls, self.calls - self._switched_at)
            if len(own) >= self.min_samples:
                return max(float(np.quantile(own, self.quantile) - np.median(own)), 0.0)
        return min(self.base_tail[v] - self.base_p50[v] for v in self.order)

    def _scaled(self, vid: str) -> float:
        median = self.base_p50[vid] * self.load_factor() * self.correction(vid)
        # the excess is capped at the median itself: right after a change of load the window of the variant in
        # use mixes two levels, and that step is not jitter
        return median + min(self.jitter(), median)

    def predict(self, vid: str) -> float:
        """Predicted tail latency (ms) of ``vid`` at the current load."""
        if vid == self.current:
            own = self.windows[vid].fresh(self.calls, self.calls - self._switched_at)
            if len(own) >= self.min_samples:
                return float(np.quantile(own, self.quantile))
            return max(self._scaled(vid), float(np.median(own))) if own else self._scaled(vid)
        return self._scaled(vid)

    def predictions(self) -> dict[str, float]:
        return {v: self.predict(v) for v in self.order}

    # -- choice -----------------------------------------------------------------------------------
    def choose(self, budget_ms: float) -> Decision:
        """The variant to run next under ``budget_ms`` (see the module docstring for the rules)."""
        preds = self.predictions()
        cur = self.current
        cur_rank = self.order.index(cur) if cur is not None else len(self.order)
        target = None
        for rank, v in enumerate(self.order):
            if cur is not None and rank < cur_rank:  # an upgrade: margin and dwell
                if preds[v] <= budget_ms * (1.0 - self.margin) and self._since_switch >= self.dwell:
                    target = v
                    break
            elif preds[v] <= budget_ms and not (v == cur and self._miss_streak >= 2):
                target = v
                break
        fits = target is not None
        if target is None:  # nothing fits: the fastest by prediction
            target = min(self.order, key=lambda v: preds[v])
        if target != cur:
            if cur is not None:
                self.switches += 1
                upgrade = self.order.index(target) < cur_rank
                if not upgrade and self._last_upgrade_call is not None and \
                        self.calls - self._last_upgrade_call <= 2 * self.dwell:
                    self.dwell = min(self.dwell * 2, self.base_dwell * 8)  # failed upgrade: back off
                self._last_upgrade_call = self.calls if upgrade else None
            self.current = target
            self._switched_at = self.calls
            self._since_switch = 0
            self._miss_streak = 0
            preds[target] = self.predict(target)
        elif self._since_switch >= 4 * self.dwell:
            self.dwell = self.base_dwell  # stable for long: forget earlier back-offs
        decision = Decision(target, preds[target], fits)
        if self.probe_every and self.calls and self.calls % self.probe_every == 0 and len(self.order) > 1:
            probe = self._pick_probe(preds, budget_ms)
            if probe is not None:
                self.probes += 1
                return Decision(probe, preds[probe], True, probe=True)
        return decision

    def _pick_probe(self, preds: Mapping[str, float], budget_ms: float) -> str | None:
        """The stalest other variant predicted to fit the budget (with the margin for slower ones), if any."""
        cur_rank = self.order.index(self.current)
        others = [v for i, v in enumerate(self.order) if v != self.current
                  and preds[v] <= budget_ms * ((1.0 - self.margin) if i < cur_rank else 1.0)]
        if not others:
            return None
        return min(others, key=lambda v: (self.windows[v].last_call if self.windows[v].last_call is not None
                                          else -math.inf))

    def observe(self, vid: str, latency_ms: float, budget_ms: float, probe: bool = False) -> None:
        """Record one run of ``vid``."""
        trial = probe or (vid == self.current and self.calls - self._switched_at < self.min_samples
                          and self.switches > 0)
        if trial and self._ratios:  # learn how far this variant strays from uniform scaling
            seen = math.log(max(latency_ms, 1e-6) / (self.base_p50[vid] * self.load_factor()))
            # slower than thought: believe it at once (a miss is expensive); faster: move halfway
            rate = 1.0 if seen > self.log_corr[vid] else self.learn_rate
            self.log_corr[vid] += rate * (seen - self.log_corr[vid])
        for v in self.order:  # corrections fade back towards 1 unless renewed (over a few horizons)
            self.log_corr[v] *= 1.0 - 1.0 / (2 * self.horizon)
        self.windows[vid].add(self.calls, latency_ms)
        self._ratios.append(latency_ms / (self.base_p50[vid] * self.correction(vid)))
        self.calls += 1
        if not probe:
            self._since_switch += 1
            self._miss_streak = self._miss_streak + 1 if latency_ms > budget_ms else 0
