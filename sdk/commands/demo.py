"""``edgekit demo``: EfficientNet-Lite0 end to end: prepare, convert to a bundle, classify photos under a budget."""

from __future__ import annotations

import sys
import time

import numpy as np

from ._common import human_size, print_json, table


def register(sub) -> None:
    p = sub.add_parser("demo", help="end to end on EfficientNet-Lite0: convert, compare variants, classify photos")
    p.add_argument("--budget-ms", type=float, help="latency budget per photo (default: 2x the fastest variant's "
                                                   "profiled p50)")
    p.add_argument("--targets", nargs="+", metavar="FMT", help="formats to build (default: onnx, tflite if installed)")
    p.add_argument("--repeats", type=int, default=5, help="budgeted runs per photo (default 5)")
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

    _say(f"2/3 comparing {len(bundle.runnable())} variants on {len(photos)} scikit-image photos")
    tops = _top1_per_variant(bundle, feeds, opts)
    _say("3/3 profiling the variants on this machine (one at a time; cached) and classifying under a budget")
    clf = vision.Classifier(path, budget_ms=1e9 if args.budget_ms is None else args.budget_ms, **opts)
    sess = clf.session
    budget, rule = _choose_budget(sess, args.budget_ms)
    sess.budget_ms = budget
    predicted = sess.model.predictions()  # before any run: from the profile alone
    expected = _best_for(sess, budget, predicted)
    sess.warmup()  # open the variant the budget starts with: the first photo does not pay for loading it
    preds = []
    for name, im in photos.items():
        for _ in range(args.repeats):
            pred = clf.classify_one(im, top=3, source=name)
        preds.append(pred)
    stats = clf.stats()
    rows = _rows(bundle, tops, sess, expected, predicted)
    total = time.perf_counter() - t0
    if args.json:
        print_json({"bundle": str(path), "budget_ms": budget, "budget_rule": rule, "expected_variant": expected,
                    "variants": rows, "predictions": [dict(p.to_json(), imagenet=vision.imagenet_verdict(
                        p.source, p.top[0]["index"])) for p in preds], "stats": stats, "seconds": total})
        return 0
    _print_text(path, budget, rule, expected, preds, rows, stats, total)
    return 0


def _top1_per_variant(bundle, feeds: dict, opts: dict) -> dict[str, dict[str, int]]:
    """Each runnable variant's top-1 class per photo (one variant open at a time)."""
    from edgekit.apps import vision

    tops = {}
    for v in bundle.runnable():
        sess = bundle.load(v, **opts)
        tops[v.id] = {n: int(np.argmax(sess.run({vision.INPUT_NAME: x})[vision.OUTPUT_NAME][0]))
                      for n, x in feeds.items()}
        sess.close()
    return tops


def _choose_budget(sess, given: float | None) -> tuple[float, str]:
    """The budget and one line saying how it was chosen."""
    from edgekit.budget import check_budget

    if given is not None:
        return check_budget(given, "--budget-ms"), f"budget {given:g} ms: given with --budget-ms"
    fastest = min(sess.variants, key=lambda v: sess.profile[v]["p50_ms"])
    p50 = float(sess.profile[fastest]["p50_ms"])
    budget = round(2.0 * p50, 1)
    return budget, (f"budget {budget:g} ms: 2x the fastest variant's p50 as profiled on this machine "
                    f"({fastest} {p50:.1f} ms; --budget-ms sets another)")


def _best_for(sess, budget: float, preds: dict[str, float]) -> str:
    """The variant the budget starts with: the most accurate one predicted (from the profile) within it."""
    fit = [v for v in sess.model.order if preds[v] <= budget]
    return fit[0] if fit else min(sess.model.order, key=lambda v: preds[v])


def _rows(bundle, tops: dict, sess, expected: str, preds: dict[str, float]) -> list[dict]:
    ref = next((t for vid, t in tops.items() if vid == "onnx-fp32"), next(iter(tops.values())))
    rows = []
    for vid in [*sess.model.order, *(v for v in tops if v not in sess.model.order)]:
        v = bundle.variant(vid)
        prof = sess.profile.get(vid, {})
        agree = np.mean([tops[vid][n] == ref[n] for n in ref]) if vid in tops else None
        rows.append({"variant": vid, "format": v.format, "precision": v.precision, "size": human_size(v.size),
                     "accuracy": _r(sess.accuracy.get(vid), 4),
                     "top1_vs_fp32": f"{agree * 100:.0f}%" if agree is not None else "-",
                     "cosine": v.validation.get("cosine"), "validated": v.passed,
                     "p50_ms": _r(prof.get("p50_ms")), "p95_ms": _r(prof.get("p95_ms")),
                     "predicted_ms": _r(preds.get(vid)), "budget_pick": "<- best for the budget" if vid == expected
                     else ""})
    return rows


def _r(x, digits: int = 2) -> float | None:
    return round(float(x), digits) if x is not None else None


def _print_text(path, budget, rule, expected, preds, rows, stats, total) -> None:
    from edgekit.apps import vision

    print(f"EfficientNet-Lite0 bundle: {path}\n")
    print("Variants in the budget's order: most accurate first by validated accuracy, the faster first among equals")
    print("(top1_vs_fp32: on the photos; latency profiled on this machine, each variant on its own; predicted_ms:")
    print("the tail the budget compares):")
    print(table(rows))
    print(f"\n{rule}; best variant for it by the table: {expected}")
    print(f"\nPhotos classified under the {budget:g} ms budget:")
    for p in preds:
        best = p.top[0]
        others = ", ".join(f"{r['label']} {r['prob']:.2f}" for r in p.top[1:])
        met = "met" if p.deadline_met else "MISSED"
        print(f"  {p.source:<22} {best['label']} ({best['index']}) {best['prob']:.2f}   [{others}]   "
              f"{p.variant}, {p.latency_ms:.1f} ms, budget {met}; {vision.imagenet_verdict(p.source, best['index'])}")
    if stats and stats.get("within_budget") is not None:
        used = [k for k, r in stats["variants"].items() if r["calls"]]
        mix = ", ".join(f"{k} {stats['variants'][k]['calls']}" for k in used)
        same = "as the table says" if used == [expected] else f"the table said {expected}"
        print(f"\n{stats['within_budget'] * 100:.0f}% of {stats['calls']} runs within budget; runs per variant: "
              f"{mix} ({same})")
    print(f"done in {total:.1f} s")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
