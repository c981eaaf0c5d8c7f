"""Helpers shared by CLI commands: loading inputs, printing tables and JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import InputError


def parse_inputs(items: Sequence[str] | None) -> dict[str, np.ndarray]:
    """``NAME=FILE.npy`` items -> arrays (a ``.npz`` file gives all its arrays)."""
    feeds: dict[str, np.ndarray] = {}
    for item in items or []:
        if "=" not in item:
            p = Path(item)
            if p.suffix == ".npz" and p.is_file():
                with np.load(p) as z:
                    feeds.update({k: z[k] for k in z.files})
                continue
            raise InputError(f"--input expects NAME=FILE.npy or FILE.npz, got {item!r}")
        name, path = item.split("=", 1)
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"--input {name}: cannot read {path!r} as .npy ({exc})") from None
    return feeds


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A plain aligned text table."""
    if not rows:
        return "(none)"
    cols = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def open_model(args, output: str | None = None):
    """Load ``args.model`` for ``run``/``bench``: (session, feeds, budget_ms or None, is_bundle).

    Applies --threads/--variant/--budget-ms (a bundle gets a budgeted session), refuses an existing ``output``
    without --force before any work, and takes --input files or random inputs (--seed).
    """
    from edgekit.formats import detect_format
    from edgekit.loader import load
    from edgekit.specs import random_feeds

    options = {}
    if args.threads:
        options["threads"] = args.threads
    if args.variant:
        options["variant"] = args.variant
    budget = None
    if args.budget_ms is not None:
        from edgekit.budget import check_budget

        budget = check_budget(args.budget_ms, "--budget-ms")
    if output:
        from edgekit._fs import check_writable

        check_writable(Path(output), args.force)
    bundle = detect_format(Path(args.model)) == "bundle"
    if budget is not None and bundle:
        options["budget_ms"] = budget
    sess = load(args.model, backend=args.backend, **options)
    feeds = parse_inputs(args.input) or random_feeds(sess.inputs, seed=args.seed)
    return sess, feeds, budget, bundle
