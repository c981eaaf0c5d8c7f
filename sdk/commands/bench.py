"""``edgekit bench MODEL``: latency percentiles and throughput, with a progress bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit._quiet import progress_enabled
from edgekit.bench import benchmark, percentiles

from ._common import open_model, print_json


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure latency (p50/p90/p99) and throughput")
    p.add_argument("model")
    p.add_argument("--backend", default="auto")
    p.add_argument("--variant", help="bundle variant id")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int)
    p.add_argument("--input", "-i", action="append", metavar="NAME=FILE.npy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-ms", type=float,
                   help="latency budget per call (bundles: choose the variant per call); reports misses and mix")
    p.add_argument("--plot", metavar="FILE.png", help="draw latency over time, the budget and variant switches")
    p.add_argument("--force", action="store_true", help="overwrite --plot")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    sess, feeds, budget, bundle = open_model(args, args.plot)
    fn = sess.run if budget is None or bundle else (lambda f: sess.run(f, budget_ms=budget))
    stats = benchmark(fn, feeds, runs=args.runs, warmup=args.warmup, progress=progress_enabled(not args.json))
    lat = stats.pop("latencies_ms")
    stats.update({"model": args.model, "backend": sess.backend, "variant": getattr(sess, "variant", None)})
    if budget is not None:
        stats["budget"] = _budget_report(sess, lat, budget, args.warmup)
    if args.plot:
        _plot(args, sess, lat, budget)
    if args.json:
        print_json(stats)
        return 0
    print(f"{args.model} on {sess.backend}: {stats['runs']} runs after {stats['warmup']} warm-up")
    print(f"  p50 {stats['p50_ms']:.3f} ms  p90 {stats['p90_ms']:.3f} ms  p99 {stats['p99_ms']:.3f} ms  "
          f"mean {stats['mean_ms']:.3f} ms  throughput {stats['throughput_per_s']:.1f}/s")
    if budget is not None:
        b = stats["budget"]
        print(f"  budget {budget:g} ms: {b['misses']} of {b['calls']} timed runs missed "
              f"({100 * b['within_budget']:.1f}% within), {b['switches']} variant switches")
        for vid, row in b["variants"].items():
            print(f"    {vid}: {row['calls']} calls ({100 * row['share']:.1f}%), {row['misses']} misses"
                  + (f", p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms" if row["calls"] else ""))
    if args.plot:
        print(f"  plot written to {args.plot}")
    return 0


def _budget_report(sess, lat: list[float], budget: float, warmup: int) -> dict:
    """Misses and variant mix of the timed runs (the warm-up calls are left out)."""
    history = getattr(sess, "history", None)
    if history is not None:  # a budgeted bundle session: one record per call, warm-up first
        recs = list(history)[warmup:]
        variants = [r[1] for r in recs]
        lat = [r[2] for r in recs]
        chosen = [r[1] for r in recs if not r[4]]
        extra = {"switches": sum(a != b for a, b in zip(chosen, chosen[1:])), "probes": sum(r[4] for r in recs)}
    else:
        variants = [getattr(sess, "variant", None) or "model"] * len(lat)
        extra = {"switches": 0, "probes": 0}
    per = {}
    for vid in dict.fromkeys(variants):
        vl = [x for x, w in zip(lat, variants) if w == vid]
        p = percentiles(np.asarray(vl))
        per[vid] = {"calls": len(vl), "share": len(vl) / len(lat), "misses": sum(x > budget for x in vl),
                    "p50_ms": p["p50_ms"], "p99_ms": p["p99_ms"]}
    misses = sum(x > budget for x in lat)
    return {"budget_ms": budget, "calls": len(lat), "misses": misses,
            "within_budget": (len(lat) - misses) / len(lat) if lat else None, **extra, "variants": per}


def _plot(args, sess, lat: list[float], budget: float | None) -> None:
    from edgekit.budget_plot import plot_latency

    history = getattr(sess, "history", None)
    if history is not None:
        recs = list(history)[args.warmup:]
        times, lat, variants = [r[0] - recs[0][0] for r in recs], [r[2] for r in recs], [r[1] for r in recs]
        probes = [r[4] for r in recs]
    else:
        import itertools

        times = [t / 1e3 for t in itertools.accumulate(lat)]  # back-to-back runs: time = sum of latencies
        variants = [getattr(sess, "variant", None) or Path(args.model).name] * len(lat)
        probes = None
    plot_latency(args.plot, times, lat, variants, budget, title=f"edgekit bench {Path(args.model).name}",
                 force=args.force, probes=probes)
