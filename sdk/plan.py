"""Plan a bundle for a board you do not hold: estimated latency per variant and the variant a budget picks.

For each variant: the graph's cost (:mod:`edgekit.graph_cost`: fp32 FLOPs, int8 ops, bytes) gives a roofline
time on a profile (``max(flops / peak_fp32, int8_ops / peak_int8, bytes / bandwidth)``). The variant is
measured on this host (cached like budgeted sessions' profiles); its measured latency divided by the host
roofline is its efficiency, and the board estimate is that efficiency times the board roofline. With
``threads`` the peaks are per-core figures times ``min(threads, cores)`` on both sides. Variants that
cannot run here get the median efficiency of those that can ("uncalibrated"). Every figure is an estimate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .budget import check_budget
from .bundle import Bundle, Variant, _backend_for, rank_key
from .errors import InputError

#: the runtime that runs each bundle format on a board (compared with the profile's preferred runtimes)
_RUNTIME_OF = {"onnx": "onnxruntime", "tflite": "litert", "coreml": "coreml", "tvm": "tvm"}


def _peaks(profile, threads: int | None) -> tuple[float, float, float]:
    """(GFLOP/s fp32, GOP/s int8, GB/s) usable with ``threads`` threads (all cores when None)."""
    share = 1.0 if threads is None else min(threads, profile.cores) / profile.cores
    return profile.peak_gflops_fp32 * share, profile.peak_gops_int8 * share, profile.mem_bandwidth_gbs


def roofline_ms(cost: dict, profile, threads: int | None = None) -> float:
    """Lower-bound time (ms) of one inference of a graph with ``cost`` on ``profile``."""
    f32, i8, bw = _peaks(profile, threads)
    return max(cost["flops"] / (f32 * 1e9), cost["int8_ops"] / (i8 * 1e9), cost["bytes"] / (bw * 1e9)) * 1e3


def _for_board(v: Variant, board) -> str | None:
    """Why ``v`` is not meant for ``board`` (None if it is)."""
    rt = _RUNTIME_OF.get(v.format)
    if rt is None or rt not in board.preferred_runtimes:
        return f"{v.format} is not among {board.name}'s runtimes ({', '.join(board.preferred_runtimes)})"
    target = v.extra.get("board") or v.extra.get("target_board")
    if v.format == "tvm" and target and target != board.name:
        return f"TVM module compiled for {target}"
    return None


def plan(bundle: str | Bundle, board: str, budget_ms: float, threads: int | None = 1, backend: str = "auto",
         host: Any = None, quantile_key: str = "p95_ms", measure: bool = True, cache_dir: Any = None) -> dict:
    """Estimate each variant's latency on ``board`` and pick the variant a ``budget_ms`` budget would run.

    ``host``: the host's board profile (default :func:`edgekit.boards.host_profile`). ``threads``: threads
    used on host and board (1 by default: the most transferable figure). Returns a JSON-ready dict whose
    ``variants`` rows carry ``est_p50_ms``/``est_tail_ms`` (estimates) and ``chosen`` the picked id.
    """
    from edgekit import boards

    from .graph_cost import graph_cost
    from .profile_cache import ProfileCache
    from .profile_cache import measure as measure_fn
    from .specs import TensorSpec, random_feeds

    budget = check_budget(budget_ms, "budget_ms")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be an integer >= 1, got {threads!r}")
    b = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    prof = boards.get_profile(board)
    host = host or boards.host_profile()
    variants = sorted(b.variants, key=rank_key)
    rows: dict[str, dict] = {}
    for v in variants:
        row: dict[str, Any] = {"id": v.id, "format": v.format, "precision": v.precision,
                               "pruning": v.pruning or "", "accuracy": v.accuracy, "passed": v.passed}
        why = _for_board(v, prof)
        if why:
            row["skipped"] = why
        elif v.format != "onnx":
            row["skipped"] = "no cost model for this format yet (ONNX variants only)"
        else:
            cost = graph_cost(b.artifact(v))
            row.update({"gflops": cost["flops"] / 1e9, "gops_int8": cost["int8_ops"] / 1e9,
                        "mbytes": cost["bytes"] / 1e6, "host_roofline_ms": roofline_ms(cost, host, threads),
                        "board_roofline_ms": roofline_ms(cost, prof, threads),
                        "runs_here": _backend_for(v, backend) is not None})
        rows[v.id] = row
    measurable = [vid for vid, r in rows.items() if "skipped" not in r and r["runs_here"]]
    measured: dict[str, dict] = {}
    if measure and measurable:
        opts = {"backend": backend, **({"threads": threads} if threads else {})}
        specs = [TensorSpec.from_json(s) for s in b.manifest.get("inputs") or []]

        def measure_ids(vids: list[str]) -> dict[str, dict]:
            sessions = {vid: b.load(vid, **opts) for vid in vids}
            feeds = random_feeds(specs or sessions[vids[0]].inputs, seed=0)
            try:
                return measure_fn({vid: (lambda s=s: s.run(feeds)) for vid, s in sessions.items()})
            finally:
                for s in sessions.values():
                    s.close()

        measured = ProfileCache(b, opts, root=cache_dir).get(measurable, measure_ids)
    effs = []
    for vid in measurable:
        if vid in measured:
            r = rows[vid]
            r["host_p50_ms"] = measured[vid]["p50_ms"]
            r["host_tail_ms"] = measured[vid].get(quantile_key, measured[vid]["p50_ms"])
            r["efficiency"] = r["host_p50_ms"] / max(r["host_roofline_ms"], 1e-9)
            effs.append(r["efficiency"])
    default_eff = float(np.median(effs)) if effs else None
    for r in rows.values():
        if "skipped" in r:
            continue
        if "efficiency" in r:
            scale = r["board_roofline_ms"] / max(r["host_roofline_ms"], 1e-12)
            r["est_p50_ms"] = r["host_p50_ms"] * scale
            r["est_tail_ms"] = r["host_tail_ms"] * scale
            r["calibrated"] = True
        elif default_eff is not None:
            r["est_p50_ms"] = r["board_roofline_ms"] * default_eff
            r["est_tail_ms"] = r["est_p50_ms"] * 1.2
            r["calibrated"] = False
        else:
            r["est_p50_ms"] = r["est_tail_ms"] = None
            r["calibrated"] = False
        if r["est_tail_ms"] is not None:
            r["fits"] = r["est_tail_ms"] <= budget
    cands = [r for r in rows.values() if r.get("est_tail_ms") is not None and r["passed"]]
    fit = [r for r in cands if r["fits"]]
    chosen = fit[0]["id"] if fit else (min(cands, key=lambda r: r["est_tail_ms"])["id"] if cands else None)
    for r in rows.values():
        r["chosen"] = r["id"] == chosen
    return {
        "bundle": str(b.path), "board": prof.name, "board_title": prof.title, "host": host.name,
        "budget_ms": budget, "threads": threads, "chosen": chosen, "meets_budget": bool(fit),
        "estimate": True, "tail": quantile_key.removesuffix("_ms"),
        "note": ("estimates: host measurements scaled by the roofline ratio of the board's to the host's peak "
                 "compute and memory bandwidth (profiles' figures); not measured on the board"),
        "board_figures": {"cores": prof.cores, "peak_gflops_fp32": prof.peak_gflops_fp32,
                          "peak_gops_int8": prof.peak_gops_int8, "mem_bandwidth_gbs": prof.mem_bandwidth_gbs},
        "host_figures": {"cores": host.cores, "peak_gflops_fp32": host.peak_gflops_fp32,
                         "peak_gops_int8": host.peak_gops_int8, "mem_bandwidth_gbs": host.mem_bandwidth_gbs},
        "variants": list(rows.values()),
    }
