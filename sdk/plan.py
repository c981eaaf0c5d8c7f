"""Plan a bundle for a board you do not hold: estimated latency per variant and the variant a budget picks.

For each variant: the cost of its ONNX graph (:mod:`edgekit.graph_cost`: fp32 FLOPs, int8 ops, bytes) at the
input shape the estimate is for gives a roofline time on a profile (``max(flops / peak_fp32, int8_ops /
peak_int8, bytes / bandwidth)``). TFLite, Core ML and composite variants are costed on their source graph (the
bundle's ONNX variant of the same pruning and precision, else fp32). The variant itself is measured on this
host in its own runtime (or read from the cached profile of the same bundle, options and shapes); its measured
latency over the host roofline is the runtime's efficiency here, and the board estimate is that efficiency times
the board roofline. Variants that cannot run here get the median efficiency of those that can ("uncalibrated").
Dynamic input dims take ``input_shapes`` (``--input-shape``), else the shapes the bundle was validated or built
at (manifest), never 1. With ``threads`` the peaks are per-core figures times ``min(threads, cores)`` on both
sides. Every figure is an estimate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from .budget import check_budget
from .bundle import Bundle, Variant, _backend_for, rank_key
from .errors import InputError
from .specs import TensorSpec

#: the runtime that runs each bundle format on a board (compared with the profile's preferred runtimes)
_RUNTIME_OF = {"onnx": "onnxruntime", "onnx-reduced": "onnxruntime", "tflite": "litert", "coreml": "coreml",
               "tvm": "tvm"}

Shapes = dict[str, tuple[int, ...]]


class _Skip(Exception):
    """A variant that gets no estimate (the message says why)."""


def _peaks(profile, threads: int | None) -> tuple[float, float, float]:
    """(GFLOP/s fp32, GOP/s int8, GB/s) usable with ``threads`` threads (all cores when None)."""
    share = 1.0 if threads is None else min(threads, profile.cores) / profile.cores
    return profile.peak_gflops_fp32 * share, profile.peak_gops_int8 * share, profile.mem_bandwidth_gbs


def roofline_ms(cost: dict, profile, threads: int | None = None) -> float:
    """Lower-bound time (ms) of one inference of a graph with ``cost`` on ``profile``."""
    f32, i8, bw = _peaks(profile, threads)
    return max(cost["flops"] / (f32 * 1e9), cost["int8_ops"] / (i8 * 1e9), cost["bytes"] / (bw * 1e9)) * 1e3


def _for_board(b: Bundle, v: Variant, board) -> None:
    """Raise :class:`_Skip` when ``v`` is not meant for ``board``."""
    runtimes_of = board.preferred_runtimes
    if v.format == "composite":
        meta = json.loads((b.artifact(v) / "plan.json").read_text())
        target = meta.get("target_format")
        missing = [r for r in (_RUNTIME_OF.get(target, str(target)), "tvm") if r not in runtimes_of]
        if missing:
            raise _Skip(f"composite {target} + TVM: {', '.join(missing)} not among {board.name}'s runtimes")
        if board.name not in meta.get("boards", []):
            raise _Skip(f"composite's TVM kernels built for {', '.join(meta.get('boards', []))}, not {board.name}")
        return
    rt = _RUNTIME_OF.get(v.format)
    if rt is None or rt not in runtimes_of:
        raise _Skip(f"{v.format} is not among {board.name}'s runtimes ({', '.join(runtimes_of)})")
    target = v.extra.get("board") or v.extra.get("target_board")
    if v.format == "tvm" and target and target != board.name:
        raise _Skip(f"TVM module compiled for {target}")


def _static(shape) -> bool:
    return all(isinstance(d, int) and d >= 0 for d in shape)


def recorded_shapes(b: Bundle) -> Shapes:
    """Input shapes the bundle was validated or built at: the manifest's ``validated_shapes``, else its
    ``static_shapes``, else the inputs of a variant built for fixed shapes."""
    rec: Shapes = {}
    for v in b.variants:
        for s in v.inputs:
            if _static(s.shape):
                rec.setdefault(s.name, tuple(int(d) for d in s.shape))
    for key in ("static_shapes", "validated_shapes"):  # the later wins
        rec.update({k: tuple(int(x) for x in d) for k, d in (b.manifest.get(key) or {}).items()})
    return rec


def _variant_shapes(v: Variant, specs: list[TensorSpec], given: Shapes, recorded: Shapes) -> tuple[Shapes, str]:
    """(shape of each input, where the shapes came from) for ``v``'s estimate."""
    out: Shapes = {}
    origins = set()
    for s in v.inputs or specs:
        if s.name in given:
            shape = given[s.name]
            if len(shape) != len(s.shape) or any(isinstance(d, int) and d >= 0 and d != g
                                                 for d, g in zip(s.shape, shape)):
                if _static(s.shape):
                    raise _Skip(f"built for {s.name}={'x'.join(map(str, s.shape))} only")
                raise InputError(f"--input-shape {s.name}={','.join(map(str, shape))} does not fit the input's "
                                 f"shape {list(s.shape)}")
            origins.add("--input-shape" if not _static(s.shape) else "fixed")
        elif _static(s.shape):
            shape = tuple(int(d) for d in s.shape)
            origins.add("fixed")
        elif s.name in recorded and len(recorded[s.name]) == len(s.shape):
            shape = recorded[s.name]
            origins.add("validated")
        else:
            example = ",".join(str(d) if isinstance(d, int) and d >= 0 else "N" for d in s.shape)
            raise InputError(f"input {s.name!r} has dynamic dims {list(s.shape)} and the bundle records no shape "
                             f"for it: give one with --input-shape {s.name}={example} (a number for each N)")
        out[s.name] = shape
    origin = "--input-shape" if "--input-shape" in origins else "validated" if "validated" in origins else "fixed"
    return out, origin


def _cost_source(b: Bundle, v: Variant) -> Variant:
    """The ONNX variant whose graph stands for ``v``'s cost: ``v`` itself, else the closest ONNX variant."""
    if v.format == "onnx":
        return v
    onnx_vs = [u for u in b.variants if u.format == "onnx"]
    if not onnx_vs:
        raise _Skip("no ONNX variant in the bundle to cost its graph")
    return max(onnx_vs, key=lambda u: (u.pruning == v.pruning, u.precision == v.precision, u.precision == "fp32"))


def describe_shapes(shapes: Shapes) -> str:
    """``input_ids=1x128, attention_mask=1x128``."""
    return ", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in shapes.items())


def _cost_row(b: Bundle, v: Variant, prof, host, threads, specs, given, recorded, backend) -> tuple[dict, Shapes]:
    """The static part of ``v``'s row (shape, cost, rooflines) and its input shapes."""
    from .graph_cost import graph_cost

    _for_board(b, v, prof)
    shapes, origin = _variant_shapes(v, specs, given, recorded)
    src = _cost_source(b, v)
    cost = graph_cost(b.artifact(src), shapes={k: s for k, s in shapes.items()})
    return {"shape": describe_shapes(shapes), "shape_from": origin, "cost_from": src.id,
            "gflops": cost["flops"] / 1e9, "gops_int8": cost["int8_ops"] / 1e9, "mbytes": cost["bytes"] / 1e6,
            "host_roofline_ms": roofline_ms(cost, host, threads), "board_roofline_ms": roofline_ms(cost, prof, threads),
            "runs_here": _backend_for(v, backend) is not None}, shapes


def _measure(b: Bundle, shapes: dict[str, Shapes], opts: dict, cache_dir) -> tuple[dict, list[str]]:
    """Host latency stats of each variant in ``shapes`` at its shapes, and the ids measured now (not cached)."""
    from .profile_cache import ProfileCache
    from .profile_cache import measure as measure_fn
    from .specs import random_feeds

    def measure_ids(vids: list[str]) -> dict[str, dict]:
        out = {}
        for vid in vids:  # one variant at a time: no other runtime's threads disturb its timing
            with b.load(vid, **opts) as sess:
                feeds = random_feeds([replace(s, shape=shapes[vid][s.name]) if s.name in shapes[vid] else s
                                      for s in sess.inputs], seed=0)
                out.update(measure_fn({vid: lambda s=sess, f=feeds: s.run(f)}, max_seconds=1.0))
        return out

    key = {vid: {k: list(s) for k, s in sh.items()} for vid, sh in shapes.items()}
    cache = ProfileCache(b, {**opts, "input_shapes": key}, root=cache_dir)
    got = cache.get(list(shapes), measure_ids)
    return got, list(cache.measured)


def _estimate(rows: dict[str, dict], measured: dict, fresh: list[str], quantile_key: str, budget: float) -> None:
    """Fill host figures, efficiencies and board estimates into ``rows``."""
    effs = []
    for vid, m in measured.items():
        r = rows[vid]
        r["host_p50_ms"] = m["p50_ms"]
        r["host_tail_ms"] = m.get(quantile_key, m["p50_ms"])
        r["host_from"] = "measured now" if vid in fresh else "cached profile"
        r["host_stable"] = m.get("stable")
        r["efficiency"] = r["host_p50_ms"] / max(r["host_roofline_ms"], 1e-9)
        effs.append(r["efficiency"])
    default_eff = float(np.median(effs)) if effs else None
    for r in rows.values():
        if "skipped" in r:
            continue
        r["est_p50_ms"] = r["est_tail_ms"] = None
        r["calibrated"] = "efficiency" in r
        if r["calibrated"]:
            scale = r["board_roofline_ms"] / max(r["host_roofline_ms"], 1e-12)
            r["est_p50_ms"], r["est_tail_ms"] = r["host_p50_ms"] * scale, r["host_tail_ms"] * scale
        elif default_eff is not None:
            r["est_p50_ms"] = r["board_roofline_ms"] * default_eff
            r["est_tail_ms"] = r["est_p50_ms"] * 1.2
            r["host_from"] = "not run here: median efficiency of the measured variants"
        if r["est_tail_ms"] is not None:
            r["fits"] = r["est_tail_ms"] <= budget


def plan(bundle: str | Bundle, board: str, budget_ms: float, threads: int | None = 1, backend: str = "auto",
         host: Any = None, quantile_key: str = "p95_ms", measure: bool = True, cache_dir: Any = None,
         input_shapes: Mapping[str, Iterable[int]] | Iterable[str] | None = None) -> dict:
    """Estimate each variant's latency on ``board`` and pick the variant a ``budget_ms`` budget would run.

    ``host``: the host's board profile (default :func:`edgekit.boards.host_profile`). ``threads``: threads
    used on host and board (1 by default: the most transferable figure). ``input_shapes``: ``{"input_ids":
    (1, 128)}`` or ``["input_ids=1,128"]`` for dynamic dims. Returns a JSON-ready dict whose ``variants`` rows
    carry ``shape`` (what the estimate is for), ``est_p50_ms``/``est_tail_ms`` and ``chosen`` the picked id.
    """
    from edgekit import boards

    from .converters.shapes import parse_input_shapes

    budget = check_budget(budget_ms, "budget_ms")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be an integer >= 1, got {threads!r}")
    b = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    prof = boards.get_profile(board)
    host = host or boards.host_profile()
    given = dict(parse_input_shapes(input_shapes))
    specs = [TensorSpec.from_json(s) for s in b.manifest.get("inputs") or []]
    unknown = set(given) - {s.name for s in specs} - {s.name for v in b.variants for s in v.inputs}
    if unknown:
        raise InputError(f"--input-shape: the bundle has no input {', '.join(sorted(unknown))}")
    recorded = recorded_shapes(b)
    rows: dict[str, dict] = {}
    shapes: dict[str, Shapes] = {}
    for v in sorted(b.variants, key=rank_key):
        row: dict[str, Any] = {"id": v.id, "format": v.format, "precision": v.precision,
                               "pruning": v.pruning or "", "accuracy": v.accuracy, "passed": v.passed}
        try:
            extra, shapes[v.id] = _cost_row(b, v, prof, host, threads, specs, given, recorded, backend)
            row.update(extra)
        except _Skip as why:
            row["skipped"] = str(why)
        rows[v.id] = row
    measurable = {vid: shapes[vid] for vid, r in rows.items() if "skipped" not in r and r["runs_here"]}
    measured, fresh = {}, []
    if measure and measurable:
        opts = {"backend": backend, **({"threads": threads} if threads else {})}
        measured, fresh = _measure(b, measurable, opts, cache_dir)
    _estimate(rows, measured, fresh, quantile_key, budget)
    return _report(b, prof, host, budget, threads, quantile_key, given, rows)


def _report(b: Bundle, prof, host, budget: float, threads, quantile_key: str, given: Shapes, rows: dict) -> dict:
    """The pick and the JSON-ready report."""
    cands = [r for r in rows.values() if r.get("est_tail_ms") is not None and r["passed"]]
    fit = [r for r in cands if r["fits"]]
    chosen = fit[0]["id"] if fit else (min(cands, key=lambda r: r["est_tail_ms"])["id"] if cands else None)
    for r in rows.values():
        r["chosen"] = r["id"] == chosen
    figures = ("cores", "peak_gflops_fp32", "peak_gops_int8", "mem_bandwidth_gbs")
    return {
        "bundle": str(b.path), "board": prof.name, "board_title": prof.title, "host": host.name,
        "budget_ms": budget, "threads": threads, "chosen": chosen, "meets_budget": bool(fit),
        "estimate": True, "tail": quantile_key.removesuffix("_ms"),
        "input_shapes": {k: list(s) for k, s in given.items()},
        "note": ("estimates: each variant's latency measured on this host in its own runtime, scaled by the roofline "
                 "ratio of the board's to the host's peak compute and memory bandwidth (profiles' figures), for the "
                 "graph's cost at the input shape shown; TFLite, Core ML and composite variants are costed on their "
                 "source ONNX graph; not measured on the board"),
        "board_figures": {k: getattr(prof, k) for k in figures},
        "host_figures": {k: getattr(host, k) for k in figures},
        "variants": list(rows.values()),
    }
