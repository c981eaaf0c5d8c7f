"""Plot of a budgeted run: latency per call over time, the budget line, and where the variant switched.

matplotlib is the ``plot`` extra and is imported only here, inside :func:`plot_latency`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ._extras import require
from ._fs import atomic_file


def plot_latency(out: str | Path, times_s: Sequence[float], latencies_ms: Sequence[float],
                 variants: Sequence[str], budget_ms: float | None = None, title: str = "",
                 force: bool = False) -> Path:
    """Write a PNG: one dot per call coloured by variant, the budget as a red line, switches as grey lines."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out)
    order = list(dict.fromkeys(variants))
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    try:
        for i, v in enumerate(order):
            xs = [t for t, w in zip(times_s, variants) if w == v]
            ys = [y for y, w in zip(latencies_ms, variants) if w == v]
            ax.scatter(xs, ys, s=6, color=f"C{i}", label=f"{v} ({len(xs)} calls)", zorder=3)
        switches = [times_s[i] for i in range(1, len(variants)) if variants[i] != variants[i - 1]]
        for k, t in enumerate(switches):
            ax.axvline(t, color="0.75", lw=0.6, zorder=1, label="variant switch" if k == 0 else None)
        if budget_ms is not None:
            missed = sum(y > budget_ms for y in latencies_ms)
            ax.axhline(budget_ms, color="red", lw=1.2, zorder=2,
                       label=f"budget {budget_ms:g} ms ({missed} of {len(latencies_ms)} missed)")
        ax.set_yscale("log")
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title(title or "latency per call")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        with atomic_file(out, force=force) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return out
