"""``edgekit run MODEL``: run once on given or random inputs and summarise the outputs."""

from __future__ import annotations

import numpy as np

from ._common import open_model, print_json


def register(sub) -> None:
    p = sub.add_parser("run", help="run a model once on given or random inputs")
    p.add_argument("model")
    p.add_argument("--input", "-i", action="append", metavar="NAME=FILE.npy", help="an input (repeatable)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--variant", help="bundle variant id")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--threads", type=int)
    p.add_argument("--budget-ms", type=float, help="latency budget (bundles: choose a variant that meets it)")
    p.add_argument("--output", "-o", metavar="OUT.npz", help="save the outputs")
    p.add_argument("--force", action="store_true", help="overwrite --output")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def summarize(name: str, a: np.ndarray) -> dict:
    row = {"name": name, "dtype": a.dtype.name, "shape": list(a.shape)}
    if a.size and a.dtype.kind in "fiub":
        af = a.astype(np.float64)
        row.update(min=float(af.min()), max=float(af.max()), mean=float(af.mean()))
        if a.ndim >= 1 and a.shape[-1] > 1 and a.dtype.kind == "f":
            row["argmax"] = np.argmax(a.reshape(-1, a.shape[-1]), axis=-1)[:8].tolist()
    return row


def run(args) -> int:
    sess, feeds, budget, bundle = open_model(args, args.output)
    # a budgeted bundle session applies the budget to every call; a plain model times this call against it
    outs = sess.run(feeds) if budget is None or bundle else sess.run(feeds, budget_ms=budget)
    rows = [summarize(k, v) for k, v in outs.items()]
    report = {"model": args.model, "backend": sess.backend, "variant": getattr(sess, "variant", None),
              "outputs": rows}
    last = getattr(sess, "last_run", None)
    if last is not None:
        report["last_run"] = last
    if args.output:
        from edgekit._fs import atomic_file

        with atomic_file(args.output, force=True) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **outs)
    if args.json:
        print_json(report)
        return 0
    where = f"{sess.backend}" + (f", variant {report['variant']}" if report["variant"] else "")
    print(f"ran {args.model} on {where}")
    for r in rows:
        stats = ""
        if "mean" in r:
            stats = f"  min {r['min']:.4g}  max {r['max']:.4g}  mean {r['mean']:.4g}"
        if "argmax" in r:
            stats += f"  argmax {r['argmax']}"
        print(f"  {r['name']}: {r['dtype']}{r['shape']}{stats}")
    if last is not None:
        print(f"  latency {last['latency_ms']:.3f} ms, budget met: {last['deadline_met']}")
    if args.output:
        print(f"outputs saved to {args.output}")
    return 0
