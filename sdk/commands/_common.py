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
