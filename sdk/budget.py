"""``BudgetedSession``: run a bundle under a latency budget, choosing among its variants on every call.

On first use on a device each runnable, validated variant is warmed up and measured (the profile is cached,
see :mod:`edgekit.profile_cache`); then every call runs the most accurate variant predicted to meet the
budget (:mod:`edgekit.latency`), adapting when the device slows down or recovers, and accounts for it
(``last_run``, ``stats()``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import numpy as np

from .bench import percentiles
from .errors import BackendUnavailable, DeadlineError, InputError
from .latency import LatencyModel, check_budget  # noqa: F401 (check_budget: re-exported)
from .profile_cache import ProfileCache, measure
from .session import ThreadLastRun
from .specs import TensorSpec, normalize_feeds, random_feeds

if TYPE_CHECKING:  # bundle.py opens budgeted sessions: importing it here would close an import circle
    from .bundle import Bundle, Variant

#: per-variant latencies kept for ``stats()`` percentiles, and run records kept in ``history``
_KEEP = 100_000


class RunRecord(NamedTuple):
    """One call as ``last_run`` reports it (stored as this tuple on every call; a dict once read)."""

    variant: str
    latency_ms: float
    budget_ms: float
    deadline_met: bool
    predicted_ms: float
    probe: bool


class _Account:
    """One variant's accounting for ``stats()``: calls, misses and its latest latencies (ms)."""

    __slots__ = ("calls", "misses", "lat")

    def __init__(self) -> None:
        self.calls = 0
        self.misses = 0
        self.lat: deque[float] = deque(maxlen=_KEEP)


class BudgetedSession(ThreadLastRun):
    """A bundle opened under a latency budget: ``run(feeds)`` picks a variant per call.

    - ``budget_ms``: the default budget of each call (``run(..., budget_ms=...)`` overrides it per call).
    - ``variants``: restrict the choice to these ids (a single id: accounting only, no choice).
    - ``strict``: when no variant is predicted to fit, raise :class:`DeadlineError` instead of running the
      fastest and counting a miss.
    - ``profile``: ``"cache"`` (default: measure once per device and bundle, cached), ``"measure"`` (always
      measure, do not write the cache) or a dict ``{id: {"p50_ms": .., "p95_ms": .., "p99_ms": ..}}``.
    - ``cache_dir``: where profiles are cached (default: see :func:`edgekit.profile_cache.cache_dir`).
    - ``quantile``, ``window``, ``margin``, ``dwell``, ``probe_every``, ``horizon``: the latency model's
      settings (see :class:`edgekit.latency.LatencyModel`).
    - other options (``threads``, ``providers`` ...) go to the backend of every variant.
    """

    def __init__(self, bundle: Bundle, budget_ms: float, backend: str = "auto",
                 variants: str | Sequence[str] | None = None, strict: bool = False,
                 profile: str | Mapping[str, Mapping[str, float]] = "cache", cache_dir: Any = None,
                 quantile: float = 0.95, window: int = 32, margin: float = 0.15, dwell: int = 20,
                 probe_every: int = 50, horizon: int = 200, **options: Any):
        self.bundle = bundle
        self.budget_ms = check_budget(budget_ms)
        self.strict = bool(strict)
        self._backend_choice = backend
        self._options = dict(options)
        self.candidates = self._candidates(bundle, backend, variants)
        self._sessions: dict[str, Any] = {}
        self._direct: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        first = self.candidates[0]
        specs = [TensorSpec.from_json(s) for s in bundle.manifest.get("inputs") or []]
        self.inputs: list[TensorSpec] = specs or list(first.inputs)
        out_specs = [TensorSpec.from_json(s) for s in bundle.manifest.get("outputs") or []]
        self.outputs: list[TensorSpec] = out_specs or list(first.outputs)
        if not self.inputs:  # a manifest without specs: ask the artifact
            sess = self._session(first.id)
            self.inputs, self.outputs = list(sess.inputs), list(sess.outputs)
        self.profile_cache: ProfileCache | None = None
        self.profile = self._profile(profile, cache_dir)
        # most accurate first; among equally accurate variants (e.g. the same fp32 model in two formats) the one
        # measured faster here comes first, so the budget keeps the most headroom at no cost in accuracy
        acc = {v.id: v.accuracy for v in self.candidates}
        ids = sorted((v.id for v in self.candidates),
                     key=lambda v: (-round(acc[v], 4), float(self.profile[v]["p50_ms"])))
        self.model = LatencyModel(ids, self.profile, quantile=quantile, window=window, margin=margin,
                                  dwell=dwell, probe_every=probe_every, horizon=horizon)
        self.accuracy = {v.id: v.accuracy for v in self.candidates}
        self._accounts = {v: _Account() for v in ids}
        self.refused = 0
        #: one record per run: (seconds since the session opened, variant, latency_ms, budget_ms, probe)
        self.history: deque[tuple[float, str, float, float, bool]] = deque(maxlen=_KEEP)
        self._t0 = time.perf_counter()
        self._tls = threading.local()  # last_run per thread (see ThreadLastRun), set directly on each call

    # -- set-up -----------------------------------------------------------------------------------
    @staticmethod
    def _candidates(bundle: Bundle, backend: str, variants: str | Sequence[str] | None) -> list[Variant]:
        runnable = bundle.runnable(backend)
        if variants is not None:
            wanted = [variants] if isinstance(variants, str) else list(variants)
            for vid in wanted:
                bundle.variant(vid)  # InputError for an unknown id
            cands = [v for v in runnable if v.id in wanted]
            if not cands:
                raise BackendUnavailable(f"{bundle.path}: none of the variants {wanted} can run here")
            return cands
        cands = [v for v in runnable if v.passed]
        if not cands:
            bundle.best(backend)  # raises BackendUnavailable with the reasons
        return cands

    def _session(self, vid: str):
        sess = self._sessions.get(vid)
        if sess is None:
            with self._load_lock:
                sess = self._sessions.get(vid)
                if sess is None:
                    sess = self.bundle.load(vid, backend=self._backend_choice, **self._options)
                    self._sessions[vid] = sess
        return sess

    def _direct_run(self, vid: str):
        """What runs already checked feeds on ``vid``: its runner when the variant's input specs are the bundle's
        (the checks are the same: skip them a second time), else its session's ``run``."""
        sess = self._session(vid)
        runner = getattr(sess, "_runner", None)
        fn = runner.run if runner is not None and list(sess.inputs) == list(self.inputs) else sess.run
        self._direct[vid] = fn
        return fn

    def _profile(self, profile, cache_dir) -> dict[str, dict]:
        ids = [v.id for v in self.candidates]
        if isinstance(profile, Mapping):
            missing = [v for v in ids if v not in profile or "p50_ms" not in profile[v]]
            if missing:
                raise InputError(f"profile has no p50_ms for variant(s) {missing}")
            return {v: dict(profile[v]) for v in ids}
        if profile not in ("cache", "measure"):
            raise InputError(f"profile must be 'cache', 'measure' or a dict of figures, got {profile!r}")
        def measure_ids(vids: list[str]) -> dict[str, dict]:
            out = {}
            for v in vids:  # one variant at a time: opened, warmed up and timed on its own
                sess = self._session(v)
                feeds = _timing_feeds(sess, self.inputs)
                out.update(measure({v: lambda s=sess, f=feeds: s.run(f)}, max_seconds=1.0))
            return out

        if profile == "measure":
            return measure_ids(ids)
        opts = {"backend": self._backend_choice, **self._options}
        self.profile_cache = ProfileCache(self.bundle, opts, root=cache_dir)
        return self.profile_cache.get(ids, measure_ids)

    # -- running ----------------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        """The variant the next call will run (absent a probe)."""
        if self.model.current is not None:
            return self.model.current
        preds = self.model.predictions()
        fit = [v for v in self.variants if preds[v] <= self.budget_ms]
        return fit[0] if fit else min(self.variants, key=lambda v: preds[v])

    def warmup(self, runs: int = 2) -> str:
        """Open the variant the next call will run and run it ``runs`` times (not accounted), so the first call
        does not pay for loading it; returns its id."""
        vid = self.variant
        sess = self._session(vid)
        feeds = _timing_feeds(sess, self.inputs)
        for _ in range(runs):
            sess.run(feeds)
        return vid

    @property
    def backend(self) -> str:
        return self._session(self.variant).backend

    @property
    def variants(self) -> list[str]:
        """The candidate variant ids, most accurate first."""
        return [v.id for v in self.candidates]

    def run(self, feeds: Mapping[str, np.ndarray] | np.ndarray, outputs: Sequence[str] | None = None,
            budget_ms: float | None = None) -> dict[str, np.ndarray]:
        """Run the best variant predicted to meet ``budget_ms`` (default: the session's budget).

        The latency accounted (``last_run``, ``stats()``, the misses) is the whole call the caller waits for:
        input checks, the choice, the run and the bookkeeping up to the return.
        """
        t0 = time.perf_counter()
        budget = self.budget_ms if budget_ms is None else check_budget(budget_ms)
        checked = normalize_feeds(self.inputs, feeds)
        model = self.model
        with self._lock:
            decision = model.choose(budget)
            if self.strict and not decision.fits:
                self._refuse(budget)
        vid, probe = decision.variant, decision.probe
        if outputs is None:
            result = (self._direct.get(vid) or self._direct_run(vid))(checked, None)
        else:
            result = self._session(vid).run(checked, outputs)
        with self._lock:
            latency = (time.perf_counter() - t0) * 1e3
            model.observe(vid, latency, budget, probe)
            account = self._accounts[vid]
            account.lat.append(latency)
            account.calls += 1
            met = latency <= budget
            if not met:
                account.misses += 1
            self.history.append((t0 - self._t0, vid, latency, budget, probe))
        self._tls.record = RunRecord(vid, latency, budget, met, decision.predicted_ms, probe)
        return result

    def _refuse(self, budget: float) -> NoReturn:
        """Count a call refused in strict mode and raise :class:`DeadlineError` (the caller holds the lock)."""
        self.refused += 1
        preds = self.model.predictions()
        raise DeadlineError(
            f"no variant of {self.bundle.path.name} is predicted to meet {budget:.3f} ms (predicted "
            + ", ".join(f"{v} {p:.3f} ms" for v, p in preds.items()) + ")")

    def stats(self) -> dict:
        """Per variant: calls, misses, p50/p95/p99; totals, switches, probes and the variant mix."""
        with self._lock:
            per = {}
            accts = self._accounts
            total = sum(a.calls for a in accts.values())
            for v in self.variants:
                row = {"calls": accts[v].calls, "misses": accts[v].misses, "accuracy": self.accuracy[v],
                       "share": accts[v].calls / total if total else 0.0,
                       "predicted_ms": self.model.predict(v), "profile_p50_ms": self.profile[v].get("p50_ms")}
                if accts[v].lat:
                    p = percentiles(np.fromiter(accts[v].lat, float))
                    row.update({k: p[k] for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")})
                per[v] = row
            misses = sum(a.misses for a in accts.values())
            mean_acc = (sum(accts[v].calls * self.accuracy[v] for v in self.variants) / total) if total else None
            return {"budget_ms": self.budget_ms, "calls": total, "misses": misses,
                    "within_budget": (total - misses) / total if total else None, "mean_accuracy": mean_acc,
                    "switches": self.model.switches, "probes": self.model.probes, "refused": self.refused,
                    "current": self.model.current, "load_factor": self.model.load_factor(), "variants": per}

    def close(self) -> None:
        self._direct.clear()
        for sess in self._sessions.values():
            sess.close()
        self._sessions.clear()

    def __enter__(self) -> BudgetedSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<edgekit.BudgetedSession {self.bundle.path.name} budget {self.budget_ms:g} ms, "
                f"variants {', '.join(self.variants)}>")


def _timing_feeds(sess, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Random feeds to time ``sess`` on: dynamic dims 1, or, for a model that runs only at a few static shapes,
    its largest one (the budget then predicts the slowest of them)."""
    choices = sess.shape_choices
    if not choices:
        return random_feeds(inputs, seed=0)
    largest = max(choices, key=lambda shapes: sum(int(np.prod(s)) for s in shapes))
    return random_feeds([TensorSpec(i.name, shape, i.dtype) for i, shape in zip(inputs, largest)], seed=0)
