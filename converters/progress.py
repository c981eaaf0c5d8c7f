"""Progress of a conversion's variant jobs: a bar on a terminal, one plain line per variant elsewhere, or nothing."""

from __future__ import annotations

from typing import Any

from edgekit._quiet import progress_enabled, terminal


class JobProgress:
    """``start(vid)`` / ``done(result)`` around each job; output goes to the real terminal even while captured."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled, self.n = total, enabled, 0
        self.bar: Any = None
        if enabled and progress_enabled(True):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="convert", unit="variant", file=terminal(), leave=True)

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def start(self, vid: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(vid)

    def done(self, result: Any) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            print(f"convert [{self.n}/{self.total}] {_summary(result)}", file=terminal(), flush=True)


def _summary(result: Any) -> str:
    """``onnx-int8: validated (cosine 0.9991)`` / ``... NOT validated`` / ``... failed at export: ...``."""
    val = getattr(result, "validation", None)
    if val is None:
        return f"{result.variant}: failed at {result.stage}: {result.error}"
    fig = f"cosine {val['cosine']:.4f}" if val.get("cosine") is not None else val.get("method", "")
    return f"{result.vid}: {'validated' if val.get('passed') else 'NOT validated'} ({fig})"
