"""``edgekit demo``: EfficientNet-Lite0 end to end: prepare, convert to a bundle, classify photos under a budget."""

from __future__ import annotations

import sys
import time

import numpy as np

from ._common import human_size, print_json, table


def register(sub) -> None:
    p = sub.add_parser("demo", help="end to end on EfficientNet-Lite0: convert, compare variants, classify photos")
    p.add_argument("--budget-ms", type=float, help="latency budget per photo (default: 2x the fastest variant's p50)")
    p.add_argument("--targets", nargs="+", metavar="FMT", help="formats to build (default: onnx, tflite if installed)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant and photo (default 5)")
    p.add_argument("--threads", type=int)
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached bundle")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    """Returns 0; every step prints to stderr as it goes and the results to stdout."""
    from edgekit.apps import vision
    from edgekit.bundle import Bundle
    from edgekit.errors import InputError

    if args.repeats < 1:
        raise InputError(f"--repeats must be >= 1, got {args.repeats}")
    opts = {"threads": args.threads} if args.threads else {}
    t0 = time.perf_counter()
    _say("1/3 preparing EfficientNet-Lite0 (cached after the first run)")
    path = vision.prepare(targets=args.targets, force=args.rebuild)
    bundle = Bundle(path)
    photos = vision.sample_photos()
    feeds = {name: vision.preprocess(im) for name, im in photos.items()}
    names = vision.labels()

    _say(f"2/3 comparing {len(bundle.runnable())} variants on {len(photos)} scikit-image photos")
    per_variant: dict[str, dict] = {}
    ref_top1: dict[str, int] = {}
    for v in bundle.runnable():
        sess = bundle.load(v, **opts)
        tops, lat = {}, []
        for name, x in feeds.items():
            sess.run({vision.INPUT_NAME: x})  # warm-up
            for _ in range(args.repeats):
                t1 = time.perf_counter()
                out = sess.run({vision.INPUT_NAME: x})[vision.OUTPUT_NAME]
                lat.append((time.perf_counter() - t1) * 1e3)
            tops[name] = int(np.argmax(out[0]))
        sess.close()
        per_variant[v.id] = {"variant": v, "tops": tops, "p50": float(np.median(lat))}
        if v.precision == "fp32" and v.format == "onnx" and not v.pruning:
            ref_top1 = tops
    if not ref_top1:
        ref_top1 = next(iter(per_variant.values()))["tops"]
    rows = []
    for vid, d in per_variant.items():
        v = d["variant"]
        agree = np.mean([d["tops"][n] == ref_top1[n] for n in feeds])
        rows.append({"variant": vid, "format": v.format, "precision": v.precision, "size": human_size(v.size),
                     "top1_vs_fp32": f"{agree * 100:.0f}%", "cosine": v.validation.get("cosine"),
                     "validated": v.passed, "p50_ms": round(d["p50"], 2)})

    budget = args.budget_ms
    if budget is None:
        budget = round(2.0 * min(d["p50"] for d in per_variant.values()), 1)
    _say(f"3/3 classifying the photos under a {budget:g} ms budget")
    clf = vision.Classifier(path, budget_ms=budget, **opts)
    preds = [clf.classify_one(im, top=3, source=name) for name, im in photos.items()]
    stats = clf.stats()
    total = time.perf_counter() - t0

    if args.json:
        print_json({"bundle": str(path), "budget_ms": budget, "variants": rows,
                    "predictions": [p.to_json() for p in preds], "stats": stats, "seconds": total})
        return 0
    print(f"EfficientNet-Lite0 bundle: {path}\n")
    print(f"Photos classified under a {budget:g} ms budget:")
    for p in preds:
        best = p.top[0]
        others = ", ".join(f"{r['label']} {r['prob']:.2f}" for r in p.top[1:])
        met = "met" if p.deadline_met else "MISSED"
        print(f"  {p.source:<22} {best['label']} ({best['index']}) {best['prob']:.2f}   [{others}]   "
              f"{p.variant}, {p.latency_ms:.1f} ms, budget {met}")
    print("\nVariants (top-1 agreement with fp32 on the photos; p50 latency on this machine):")
    print(table(rows))
    within = stats.get("within_budget") if stats else None
    if within is not None:
        print(f"\nbudget {budget:g} ms: {within * 100:.0f}% of runs within budget; "
              f"variants used: {', '.join(k for k, r in stats['variants'].items() if r['calls'])}")
    print(f"done in {total:.1f} s (labels from {len(names)} ImageNet classes)")
    return 0


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
