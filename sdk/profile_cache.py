"""Latency profiles of a bundle's variants on this device, measured once and cached.

A profile holds each variant's unloaded latency percentiles (after a warm-up). It is stored as JSON under
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

PROFILE_VERSION = 1
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


def measure(runs: Mapping[str, Callable[[], object]], warmup: int = 3, min_runs: int = 10, max_runs: int = 200,
            max_seconds: float = 2.0) -> dict[str, dict]:
    """Warm up each callable, then time them round-robin (so passing noise hits all alike).

    Stops after ``max_runs`` rounds or ``max_seconds`` in all, with at least ``min_runs`` rounds.
    Returns per key the percentiles of :func:`edgekit.bench.percentiles` and ``runs``.
    """
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    lat: dict[str, list[float]] = {k: [] for k in runs}
    t_end = time.perf_counter() + max_seconds
    rounds = 0
    while rounds < max_runs and (rounds < min_runs or time.perf_counter() < t_end):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            lat[k].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    out = {}
    for k, v in lat.items():
        out[k] = percentiles(np.asarray(v))
        out[k]["runs"] = len(v)
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
            cached.update(measure_ids(self.measured))
            self.save(cached)
        return {v: cached[v] for v in variant_ids}

    def save(self, variants: Mapping[str, dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"version": PROFILE_VERSION, "bundle_hash": self.bundle_hash, "device_hash": self.device_hash,
                "device": self.device, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "variants": dict(variants)}
        with atomic_file(self.path, force=True) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=2))
