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
                 force: bool = False, probes: Sequence[bool] | None = None) -> Path:
    """Write a PNG: one dot per call coloured by variant, the budget as a red line, switches as grey lines.

    ``probes`` marks calls that only probed another variant: drawn as rings, and not counted as switches.
    """
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out)
    order = list(dict.fromkeys(variants))
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    try:
        probes = list(probes) if probes is not None else [False] * len(variants)
        for i, v in enumerate(order):
            pts = [(t, y, p) for t, y, w, p in zip(times_s, latencies_ms, variants, probes) if w == v]
            chosen = [(t, y) for t, y, p in pts if not p]
            probed = [(t, y) for t, y, p in pts if p]
            if chosen:
                ax.scatter(*zip(*chosen), s=6, color=f"C{i}", label=f"{v} ({len(chosen)} calls)", zorder=3)
            if probed:
                ax.scatter(*zip(*probed), s=22, facecolors="none", edgecolors=f"C{i}", zorder=3,
                           label=f"{v} probes ({len(probed)})")
        main = [(t, w) for t, w, p in zip(times_s, variants, probes) if not p]
        switches = [main[i][0] for i in range(1, len(main)) if main[i][1] != main[i - 1][1]]
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
