"""``edgekit app {vision,bert,diffusion}``: the demo applications on real models, under a latency budget."""

from __future__ import annotations

import sys

from edgekit.errors import InputError

from ._common import print_json, table


def register(sub) -> None:
    p = sub.add_parser("app", help="run a demo app: vision (EfficientNet-Lite0), bert (MiniLM), diffusion (digits)")
    apps = p.add_subparsers(dest="app", metavar="APP", required=True)

    v = apps.add_parser("vision", help="classify images with EfficientNet-Lite0 (ImageNet)")
    v.add_argument("images", nargs="*", metavar="IMAGE")
    v.add_argument("--stream", metavar="DIR", help="play a folder of frames as a camera; drop frames when behind")
    v.add_argument("--fps", type=float, default=30.0, help="frame rate of --stream (default 30)")
    v.add_argument("--budget-ms", type=float, help="latency budget per image (chooses the variant)")
    v.add_argument("--variant", help="run this bundle variant only")
    v.add_argument("--bundle", metavar="DIR", help="a prepared EfficientNet-Lite0 bundle (default: the cached one)")
    v.add_argument("--top", type=int, default=5)
    v.add_argument("--threads", type=int)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=run_vision)

    b = apps.add_parser("bert", help="semantic search or similarity with all-MiniLM-L6-v2")
    b.add_argument("query", nargs="?", help="the search query")
    b.add_argument("--corpus", metavar="FILE", help="one document per line")
    b.add_argument("--similarity", nargs=2, metavar=("A", "B"), help="cosine similarity of two sentences")
    b.add_argument("--top", type=int, default=5)
    b.add_argument("--budget-ms", type=float, help="latency budget of the query (sequence length and variant)")
    b.add_argument("--bundle", metavar="DIR", help="a prepared MiniLM bundle (default: the cached one)")
    b.add_argument("--threads", type=int)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=run_bert)

    d = apps.add_parser("diffusion", help="generate 8x8 digits with a small DDPM (DDIM sampler)")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--budget-ms", type=float, help="pick the most DDIM steps that fit this budget")
    g.add_argument("--steps", type=int, help="DDIM steps (default 50)")
    d.add_argument("--count", type=int, default=16)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", required=True, metavar="GRID.png")
    d.add_argument("--npz", metavar="SAMPLES.npz", help="also save the samples [N, 8, 8] in [0, 1]")
    d.add_argument("--rate", action="store_true", help="rate the digits with a classifier trained on real ones")
    d.add_argument("--threads", type=int)
    d.add_argument("--force", action="store_true", help="overwrite --out / --npz")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=run_diffusion)


def _opts(args) -> dict:
    return {"threads": args.threads} if getattr(args, "threads", None) else {}


def run_vision(args) -> int:
    from edgekit.apps import vision

    if bool(args.images) == bool(args.stream):
        raise InputError("give IMAGE... or --stream DIR (one of them)")
    if args.stream:
        frames = vision.list_frames(args.stream)  # checked before the model is prepared
        del frames
    else:
        for im in args.images:  # all inputs checked before any work
            vision.load_image(im)
    opts = _opts(args)
    if args.budget_ms is not None and not args.stream:
        opts["strict"] = True  # an image that cannot meet the budget is an error; a stream counts misses
    clf = vision.Classifier(args.bundle, budget_ms=args.budget_ms, variant=args.variant, **opts)
    if args.stream:
        rep = vision.stream(clf, args.stream, fps=args.fps, top=1)
        if args.json:
            print_json({**rep.to_json(), "stats": clf.stats()})
            return 0
        lat = rep.latency_ms
        print(f"{rep.frames} frames at {rep.fps_in:g} fps: {rep.processed} processed, {rep.dropped} dropped "
              f"in {rep.wall_s:.2f} s")
        print(f"model latency p50 {lat['model_p50']:.1f} ms, p95 {lat['model_p95']:.1f} ms; frame-to-result p50 "
              f"{lat['frame_to_result_p50']:.1f} ms, p95 {lat['frame_to_result_p95']:.1f} ms")
        for p in rep.predictions[:20]:
            print(f"  {p['frame']}: {p['label']} ({p['prob']:.2f}) [{p['variant']}, {p['latency_ms']:.1f} ms]")
        return 0
    preds = [clf.classify_one(im, top=args.top) for im in args.images]
    if args.json:
        print_json({"predictions": [p.to_json() for p in preds], "stats": clf.stats()})
        return 0
    for p in preds:
        met = "" if p.deadline_met is None else (", budget met" if p.deadline_met else ", BUDGET MISSED")
        print(f"{p.source}: [{p.variant}, {p.latency_ms:.1f} ms{met}]")
        for r in p.top:
            print(f"  {r['prob']:6.3f}  {r['label']} ({r['index']})")
    return 0


def run_bert(args) -> int:
    from edgekit.apps import bert

    if args.similarity:
        if args.query or args.corpus:
            raise InputError("--similarity A B takes no QUERY or --corpus")
        a, b = args.similarity
        emb = bert.Embedder(args.bundle, **_opts(args))
        score = emb.similarity(a, b, budget_ms=args.budget_ms)
        info = emb.last.to_json()
        if args.json:
            print_json({"a": a, "b": b, "cosine": score, **info})
        else:
            print(f"cosine {score:.4f}  [{info['variant']}, seq {info['seq_len']}, {info['latency_ms']:.1f} ms]")
        return 0
    if not args.query or not args.corpus:
        raise InputError("give QUERY --corpus FILE, or --similarity A B")
    corpus = bert.read_corpus(args.corpus)
    emb = bert.Embedder(args.bundle, **_opts(args))
    print(f"embedding {len(corpus)} documents ...", file=sys.stderr)
    hits = emb.search(args.query, corpus, top=args.top, budget_ms=args.budget_ms)
    info = emb.last.to_json()
    if args.json:
        print_json({"query": args.query, "hits": hits, "query_run": info})
        return 0
    print(table(hits, ["rank", "score", "text"]))
    print(f"query: {info['variant']}, seq {info['seq_len']}"
          + (f" ({info['truncated']} truncated)" if info["truncated"] else "") + f", {info['latency_ms']:.1f} ms")
    return 0


def run_diffusion(args) -> int:
    from pathlib import Path

    import numpy as np

    from edgekit._fs import atomic_file, check_writable
    from edgekit.apps import diffusion

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out must be a .png file, got {args.out!r}")
    check_writable(out, args.force)
    if args.npz:
        check_writable(Path(args.npz), args.force)
    gen = diffusion.DigitGenerator(**_opts(args))
    s = gen.generate(args.count, steps=args.steps, budget_ms=args.budget_ms, seed=args.seed)
    diffusion.save_grid(s.images, out, force=args.force)
    if args.npz:
        with atomic_file(args.npz, force=args.force) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, samples=s.images.astype(np.float32))
    report = {"count": args.count, "steps": s.steps, "latency_ms": s.latency_ms, "budget_ms": s.budget_ms,
              "deadline_met": s.info.get("met"), "out": str(out), "npz": args.npz}
    if args.rate:
        q = diffusion.DigitsJudge().rate(s.images)
        report.update(mean_confidence=q["mean_confidence"], classes_covered=q["classes_covered"], labels=q["labels"])
    if args.json:
        print_json(report)
        return 0
    met = "" if s.budget_ms is None else f" (budget {s.budget_ms:g} ms, {'met' if s.info.get('met') else 'MISSED'})"
    print(f"{args.count} digits, {s.steps} DDIM steps, {s.latency_ms:.0f} ms{met} -> {out}"
          + (f", {args.npz}" if args.npz else ""))
    if args.rate:
        print(f"classifier: mean confidence {report['mean_confidence']:.3f}, classes covered "
              f"{report['classes_covered']}/10")
    return 0
