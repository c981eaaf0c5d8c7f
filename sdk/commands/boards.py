"""``edgekit boards``: list the known board profiles, or show one (``edgekit boards show NAME``)."""

from __future__ import annotations

from edgekit import boards as _boards

from ._common import print_json, table


def register(sub) -> None:
    p = sub.add_parser("boards", help="list board profiles, or show one: edgekit boards show NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    bsub = p.add_subparsers(dest="boards_action", metavar="ACTION")
    show = bsub.add_parser("show", help="one board profile in full")
    show.add_argument("name", help="board name, e.g. rpi4 (edgekit boards lists them)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    if getattr(args, "boards_action", None) == "show":
        return _show(args)
    detected = _boards.detect().name
    profs = _boards.profiles()
    if args.json:
        print_json([dict(p.to_dict(), detected=p.name == detected) for p in profs])
        return 0
    rows = [{"board": p.name + (" *" if p.name == detected else ""), "cpu": f"{p.cores}x {p.cpu}",
             "mem_gb": p.memory_gb, "gflops_fp32": p.peak_gflops_fp32, "gops_int8": p.peak_gops_int8,
             "bw_gbs": p.mem_bandwidth_gbs, "runtimes": ",".join(p.preferred_runtimes), "title": p.title}
            for p in profs]
    print(table(rows))
    print("\n* detected here. Details: edgekit boards show NAME")
    return 0


def _show(args) -> int:
    prof = _boards.get_profile(args.name)
    if args.json:
        print_json(prof.to_dict())
        return 0
    d = prof.to_dict()
    width = max(len(k) for k in d)
    for key, value in d.items():
        if key in ("sources", "match", "accelerators"):
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        print(f"{key.ljust(width)}  {value if value is not None else '-'}")
    for acc in prof.accelerators:
        figs = ", ".join(f"{k}={v}" for k, v in acc.items() if k not in ("name", "kind") and v is not None)
        print(f"{'accelerator'.ljust(width)}  {acc.get('name')}: {acc.get('kind')} ({figs})")
    print("sources:")
    for key, src in prof.sources.items():
        print(f"  {key}: {src}")
    return 0
