"""``edgekit backends``: which runtimes are usable here, and why the others are not."""

from __future__ import annotations

from edgekit.loader import backends

from ._common import print_json, table


def register(sub) -> None:
    p = sub.add_parser("backends", help="list runtimes and whether they work here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    rows = backends()
    if args.json:
        print_json(rows)
        return 0
    view = [{"backend": r["name"], "formats": ",".join(r["formats"]), "usable": r["available"],
             "version": r["version"], "note": r["reason"] or ""} for r in rows]
    print(table(view))
    return 0
