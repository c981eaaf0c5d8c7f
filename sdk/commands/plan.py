"""``edgekit plan BUNDLE --board B --budget-ms MS``: estimated latency per variant on a board, and the pick."""

from __future__ import annotations

from edgekit.plan import plan

from ._common import print_json, table


def register(sub) -> None:
    p = sub.add_parser("plan", help="estimate each variant's latency on a board and the variant a budget picks")
    p.add_argument("bundle")
    p.add_argument("--board", required=True, help="board profile name (see edgekit.boards)")
    p.add_argument("--budget-ms", type=float, required=True)
    p.add_argument("--threads", type=int, default=1, help="threads on host and board (default 1)")
    p.add_argument("--backend", default="auto", help="backend for the host measurements")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    rep = plan(args.bundle, args.board, args.budget_ms, threads=args.threads, backend=args.backend)
    if args.json:
        print_json(rep)
        return 0
    print(f"plan for {rep['board']} ({rep['board_title']}), budget {rep['budget_ms']:g} ms, "
          f"{rep['threads']} thread(s); host profile {rep['host']}")
    print("ESTIMATES, not measurements: host latency scaled by the board/host roofline ratio")
    rows = []
    for r in rep["variants"]:
        rows.append({"variant": r["id"], "precision": r["precision"], "accuracy": r["accuracy"],
                     "GFLOP": r.get("gflops"), "MB": r.get("mbytes"), "host p50 ms": r.get("host_p50_ms"),
                     "est p50 ms": r.get("est_p50_ms"), f"est {rep['tail']} ms": r.get("est_tail_ms"),
                     "fits": r.get("fits"), "note": r.get("skipped") or ("" if r.get("calibrated") else
                                                                         "uncalibrated"),
                     "pick": "<-" if r["chosen"] else ""})
    print(table(rows))
    if rep["chosen"] is None:
        print("no variant has an estimate for this board")
    elif rep["meets_budget"]:
        print(f"would run: {rep['chosen']} (most accurate variant estimated to meet {rep['budget_ms']:g} ms)")
    else:
        print(f"no variant is estimated to meet {rep['budget_ms']:g} ms; would run the fastest, {rep['chosen']}, "
              f"and miss")
    return 0
