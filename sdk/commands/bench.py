"""``edgekit bench MODEL``: latency percentiles and throughput, with a progress bar."""

from __future__ import annotations

from edgekit.bench import benchmark
from edgekit.loader import load
from edgekit.specs import random_feeds

from ._common import parse_inputs, print_json


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
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    options = {}
    if args.threads:
        options["threads"] = args.threads
    if args.variant:
        options["variant"] = args.variant
    sess = load(args.model, backend=args.backend, **options)
    feeds = parse_inputs(args.input) or random_feeds(sess.inputs, seed=args.seed)
    stats = benchmark(sess.run, feeds, runs=args.runs, warmup=args.warmup, progress=not args.json)
    stats.pop("latencies_ms")
    stats.update({"model": args.model, "backend": sess.backend, "variant": getattr(sess, "variant", None)})
    if args.json:
        print_json(stats)
        return 0
    print(f"{args.model} on {sess.backend}: {stats['runs']} runs after {stats['warmup']} warm-up")
    print(f"  p50 {stats['p50_ms']:.3f} ms  p90 {stats['p90_ms']:.3f} ms  p99 {stats['p99_ms']:.3f} ms  "
          f"mean {stats['mean_ms']:.3f} ms  throughput {stats['throughput_per_s']:.1f}/s")
    return 0
