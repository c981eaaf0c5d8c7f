"""Latency measurement of a session: warm-up, timed runs, percentiles and throughput."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from .errors import InputError


def percentiles(lat_ms: np.ndarray) -> dict[str, float]:
    """p50/p90/p99/mean/min/max of latencies in milliseconds."""
    if lat_ms.size == 0:
        return {}
    p50, p90, p95, p99 = np.percentile(lat_ms, [50, 90, 95, 99])
    return {
        "p50_ms": float(p50), "p90_ms": float(p90), "p95_ms": float(p95), "p99_ms": float(p99),
        "mean_ms": float(lat_ms.mean()), "min_ms": float(lat_ms.min()), "max_ms": float(lat_ms.max()),
    }


def benchmark(run: Callable[[Mapping[str, np.ndarray]], object], feeds: Mapping[str, np.ndarray],
              runs: int = 100, warmup: int = 10, progress: bool = False, desc: str = "bench") -> dict:
    """Time ``run(feeds)`` ``runs`` times after ``warmup`` calls; returns stats and raw latencies."""
    if runs < 1 or warmup < 0:
        raise InputError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    for _ in range(warmup):
        run(feeds)
    lat = np.empty(runs)
    it = range(runs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=runs, desc=desc, unit="run", leave=False)
    t_start = time.perf_counter()
    for i in it:
        t0 = time.perf_counter()
        run(feeds)
        lat[i] = (time.perf_counter() - t0) * 1e3
        if bar is not None:
            bar.update(1)
    total = time.perf_counter() - t_start
    if bar is not None:
        bar.close()
    stats = percentiles(lat)
    stats.update({"runs": runs, "warmup": warmup, "throughput_per_s": runs / total if total > 0 else None})
    stats["latencies_ms"] = lat.tolist()
    return stats
