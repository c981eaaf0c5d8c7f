"""Latency profiles of a bundle's variants on this device, measured once and cached.

A profile holds each variant's unloaded latency percentiles, measured one variant at a time after a warm-up and
checked for stability (an unstable one is measured again, and not cached). It is stored as JSON under
``$EDGEKIT_CACHE_DIR/profiles`` (else ``$XDG_CACHE_HOME/edgekit/profiles``, else
``~/.cache/edgekit/profiles``), keyed by the bundle hash (its manifest, which pins every artifact's sha256)
and the device fingerprint (CPU, core count, OS, runtime versions, backend and run options). A change of
either gives another key, so the variants are measured again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._fs import atomic_file
from .bench import percentiles

PROFILE_VERSION = 2  # 2: measured in blocks, one variant at a time, with stability figures
#: distributions whose version changes latencies (read from metadata: nothing heavy is imported)
_RUNTIME_DISTS = ("numpy", "onnxruntime", "ai-edge-litert", "tflite-runtime", "apache-tvm", "coremltools")


def cache_dir() -> Path:
    """The folder profiles are cached in (created on first write)."""
    from ._fs import cache_root

    return cache_root() / "profiles"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_fingerprint(extra: Mapping[str, Any] | None = None) -> dict:
    """What makes latencies on this device comparable: CPU, cores, OS, Python and runtime versions."""
    versions = {}
    for dist in _RUNTIME_DISTS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "machine": platform.machine(), "system": platform.system(), "cpu": _cpu_model(),
        "cores": os.cpu_count(), "python": platform.python_version(), "runtimes": versions,
        **({"options": {k: str(v) for k, v in sorted(extra.items())}} if extra else {}),
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def bundle_hash(bundle) -> str:
    """sha256 of the bundle's manifest (which names every artifact's sha256)."""
    return hashlib.sha256((Path(bundle.path) / "manifest.json").read_bytes()).hexdigest()


#: a profile is stable when its runs vary less than this (coefficient of variation, p99/p50, max/min); an unstable
#: one is measured again (up to ``attempts`` times) and never cached
STABLE = {"cv": 0.2, "p99_p50": 1.75, "max_min": 4.0}


def stability(lat_ms: np.ndarray) -> dict[str, float]:
    """Coefficient of variation, p99/p50 and max/min of a set of latencies."""
    p50, p99 = np.percentile(lat_ms, [50, 99])
    return {"cv": float(lat_ms.std() / lat_ms.mean()), "p99_p50": float(p99 / p50),
            "max_min": float(lat_ms.max() / lat_ms.min())}


def is_stable(stab: Mapping[str, float]) -> bool:
    return all(stab[k] <= limit for k, limit in STABLE.items())


def time_block(fn: Callable[[], object], warmup: int, min_runs: int, max_runs: int, seconds: float) -> np.ndarray:
    """Warm ``fn`` up (``warmup`` runs and at least a tenth of ``seconds``), then time it in one block."""
    t_warm = time.perf_counter() + seconds / 10
    n = 0
    while n < warmup or time.perf_counter() < t_warm:
        fn()
        n += 1
    lat = []
    t_end = time.perf_counter() + seconds
    while len(lat) < max_runs and (len(lat) < min_runs or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(lat)


def measure(runs: Mapping[str, Callable[[], object]], warmup: int = 5, min_runs: int = 10, max_runs: int = 200,
            max_seconds: float = 2.0, attempts: int = 3, settle_s: float = 0.02) -> dict[str, dict]:
    """Time each callable in a block of its own, one after the other, never interleaved.

    Interleaving puts every run right after another variant's, whose runtime may still hold the cores (spinning
    thread pools, caches): measured on EfficientNet-Lite0 that inflated p50s by 30-60% against a standalone run.
    Each block warms up, runs for at most ``max_seconds / len(runs)`` (at least ``min_runs`` runs) and is
    followed by ``settle_s`` of idle time. A block that is not stable (:data:`STABLE`) is measured again, up to
    ``attempts`` times; the most stable attempt is kept. Returns per key the percentiles of
    :func:`edgekit.bench.percentiles`, ``runs``, ``stability`` and ``stable``.
    """
    seconds = max_seconds / max(len(runs), 1)
    out = {}
    for k, fn in runs.items():
        best, tries = None, 0
        while tries < max(attempts, 1):
            tries += 1
            lat = time_block(fn, warmup, min_runs, max_runs, seconds)
            stab = stability(lat)
            if best is None or stab["cv"] < best[1]["cv"]:
                best = (lat, stab)
            time.sleep(settle_s)
            if is_stable(stab):
                break
        lat, stab = best
        out[k] = {**percentiles(lat), "runs": int(lat.size), "stability": stab, "stable": is_stable(stab),
                  "attempts": tries}
    return out


class ProfileCache:
    """Load or measure the profile of ``bundle``'s variants on this device.

    ``get(variant_ids, measure_ids)`` returns ``{id: stats}``; variants missing from the cached profile are
    measured together with ``measure_ids(ids) -> {id: stats}`` and the file is rewritten atomically.
    """

    def __init__(self, bundle, options: Mapping[str, Any] | None = None, root: str | Path | None = None):
        self.bundle_hash = bundle_hash(bundle)
        self.device = device_fingerprint(options)
        self.device_hash = _digest(self.device)
        self.root = Path(root) if root is not None else cache_dir()
        self.path = self.root / f"{self.bundle_hash[:16]}-{self.device_hash[:16]}.json"
        #: ids measured (not read from the cache) by the last :meth:`get`
        self.measured: list[str] = []

    def load(self) -> dict:
        """The cached variants' stats, or ``{}`` when there is no usable cache file."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if (data.get("version") != PROFILE_VERSION or data.get("bundle_hash") != self.bundle_hash
                or data.get("device_hash") != self.device_hash):
            return {}
        return dict(data.get("variants") or {})

    def get(self, variant_ids: list[str], measure_ids: Callable[[list[str]], dict]) -> dict[str, dict]:
        cached = self.load()
        self.measured = [v for v in variant_ids if v not in cached]
        if self.measured:
            fresh = measure_ids(self.measured)
            cached.update(fresh)
            # an unstable measurement is used now but not kept: the next session measures again
            self.save({v: row for v, row in cached.items() if row.get("stable", True)})
        return {v: cached[v] for v in variant_ids}

    def save(self, variants: Mapping[str, dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"version": PROFILE_VERSION, "bundle_hash": self.bundle_hash, "device_hash": self.device_hash,
                "device": self.device, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "variants": dict(variants)}
        with atomic_file(self.path, force=True) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=2))
