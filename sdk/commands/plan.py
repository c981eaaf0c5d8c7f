"""``edgekit plan BUNDLE --board B --budget-ms MS``: estimated latency per variant on a board, and the pick."""

from __future__ import annotations

from edgekit.plan import plan

from ._common import print_json, table


def register(sub) -> None:
    p = sub.add_parser("plan", help="estimate each variant's latency on a board and the variant a budget picks")
    p.add_argument("bundle")
    p.add_argument("--board", required=True, help="board profile name (see edgekit.boards)")
    p.add_argument("--budget-ms", type=float, required=True)
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="shape of a dynamic input to estimate for, e.g. input_ids=1,128 (repeatable; default: the "
                        "shapes the bundle was validated at)")
    p.add_argument("--threads", type=int, default=1, help="threads on host and board (default 1)")
    p.add_argument("--backend", default="auto", help="backend for the host measurements")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    rep = plan(args.bundle, args.board, args.budget_ms, threads=args.threads, backend=args.backend,
               input_shapes=args.input_shape)
    if args.json:
        print_json(rep)
        return 0
    print(f"plan for {rep['board']} ({rep['board_title']}), budget {rep['budget_ms']:g} ms, "
          f"{rep['threads']} thread(s); host profile {rep['host']}")
    print("ESTIMATES, not measurements: each variant's latency here scaled by the board/host roofline ratio")
    tail = rep["tail"]
    rows = [{"variant": r["id"], "format": r["format"], "precision": r["precision"], "accuracy": r["accuracy"],
             "input shape": r.get("shape"), "cost of": r.get("cost_from"), "GFLOP": r.get("gflops"),
             "traffic MB": r.get("mbytes"), "host p50 ms": r.get("host_p50_ms"), "est p50 ms": r.get("est_p50_ms"),
             f"est {tail} ms": r.get("est_tail_ms"), "fits": r.get("fits"), "host figure": _source(r),
             "pick": "<-" if r["chosen"] else ""} for r in rep["variants"]]
    print(table(rows))
    print("input shape: what each estimate is for (from --input-shape, the shapes the bundle was validated at, or "
          "the variant's fixed shape); cost of: the ONNX graph costed (TFLite, Core ML and composites: their source "
          f"graph); GFLOP: fp32 operations per inference; traffic MB: weights + activations moved per inference; "
          f"est {tail}: the tail the budget is compared with")
    if rep["chosen"] is None:
        print("no variant has an estimate for this board")
    elif rep["meets_budget"]:
        print(f"would run: {rep['chosen']} (most accurate variant estimated to meet {rep['budget_ms']:g} ms)")
    else:
        print(f"no variant is estimated to meet {rep['budget_ms']:g} ms; would run the fastest, {rep['chosen']}, "
              f"and miss")
    return 0


def _source(r: dict) -> str:
    """Where the row's host figure comes from, or why it has no estimate."""
    if r.get("skipped"):
        return f"skipped: {r['skipped']}"
    if not r.get("calibrated"):
        return "uncalibrated: " + (r.get("host_from") or "nothing measured")
    return r.get("host_from") or ""
