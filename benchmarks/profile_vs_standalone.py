"""Profiled latency of each bundle variant against a standalone bench of the same variant in a fresh process.

A budgeted session chooses variants by their profile (:mod:`edgekit.profile_cache`), so the profile must match
what the variant costs when it runs alone. For each variant of the demo bundle (EfficientNet-Lite0: ONNX and
TFLite, fp32 and int8; built on first use) this prints the profiled p50 next to the p50 of ``edgekit bench
ARTIFACT`` run in a fresh process, and their ratio: medians over a few rounds (a busy machine drifts).
Target (issue 13): within 15% for every variant.

``--diagnose`` first shows where the old profiles' excess came from, on the same variants in this process:
round-robin (interleaved) timing with every session open vs one block per variant, with ONNX Runtime's intra-op
threads spinning after each run (its default) or not, and a LiteRT run timed right after an ONNX Runtime run.

    python benchmarks/profile_vs_standalone.py [--bundle PATH] [--threads N] [--rounds 5] [--diagnose]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TARGET = 0.15


def standalone_p50(artifact: Path, threads: int | None) -> float:
    """p50 of ``edgekit bench`` (10 warm-up runs, 100 timed) in a fresh process."""
    cmd = [sys.executable, "-m", "edgekit.cli", "bench", str(artifact), "--runs", "100", "--json"]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)["p50_ms"])


def profiled(bundle: Path, threads: int | None) -> dict[str, dict]:
    """The profile a budgeted session measures (no cache read or written)."""
    import edgekit

    opts = {"threads": threads} if threads else {}
    with edgekit.load(bundle, budget_ms=1e9, profile="measure", **opts) as s:
        return s.profile


def compare(bundle: Path, threads: int | None, rounds: int) -> bool:
    """``rounds`` x (a standalone bench of every variant, then one profile); medians over the rounds."""
    import edgekit

    b = edgekit.Bundle(bundle)
    arts = {v.id: b.artifact(v) for v in b.runnable() if v.passed}
    alone: dict[str, list[float]] = {v: [] for v in arts}
    prof: dict[str, list[float]] = {v: [] for v in arts}
    stable: dict[str, list[bool]] = {v: [] for v in arts}
    for _ in range(rounds):
        for vid, a in arts.items():
            alone[vid].append(standalone_p50(a, threads))
        for vid, row in profiled(bundle, threads).items():
            prof[vid].append(row["p50_ms"])
            stable[vid].append(bool(row.get("stable")))
    print(f"{'variant':<14} {'standalone p50 ms':>18} {'profiled p50 ms':>16} {'ratio':>6} {'stable':>7}  "
          f"target within {TARGET:.0%} (medians of {rounds} rounds; per round in brackets)")
    ok = True
    for vid in arts:
        a, p = statistics.median(alone[vid]), statistics.median(prof[vid])
        met = abs(p / a - 1) <= TARGET
        ok &= met
        print(f"{vid:<14} {a:18.2f} {p:16.2f} {p / a:6.2f} {sum(stable[vid]):>4}/{rounds}  {'met' if met else 'MISSED'}"
              f"  [{', '.join(f'{x:.1f}' for x in alone[vid])}] [{', '.join(f'{x:.1f}' for x in prof[vid])}]")
    return ok


# ---------------------------------------------------------------------------------------------- diagnosis
def _ort(path: Path, threads: int | None, spinning: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 4
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _runners(b, threads: int | None, spinning: bool) -> dict:
    """One callable per variant: raw ONNX Runtime sessions (spinning as asked) and edgekit's LiteRT sessions."""
    from edgekit.specs import random_feeds

    runs = {}
    for v in b.runnable():
        if not v.passed:
            continue
        if v.format == "onnx":
            s = _ort(b.artifact(v), threads, spinning)
            feeds = {i.name: np.random.default_rng(0).standard_normal(i.shape).astype(np.float32)
                     for i in s.get_inputs()}
            runs[v.id] = lambda s=s, f=feeds: s.run(None, f)
        else:
            s = b.load(v, **({"threads": threads} if threads else {}))
            feeds = random_feeds(s.inputs, seed=0)
            runs[v.id] = lambda s=s, f=feeds: s.run(f)
    return runs


def _round_robin(runs: dict, rounds: int = 40) -> dict[str, float]:
    for fn in runs.values():
        for _ in range(3):
            fn()
    lat = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            lat[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in lat.items()}


def _blocks(runs: dict, n: int = 40) -> dict[str, float]:
    from edgekit.profile_cache import time_block

    out = {}
    for k, fn in runs.items():
        out[k] = float(np.median(time_block(fn, 5, n, n, 0.0)))
        time.sleep(0.02)
    return out


def _after_other(runs: dict, target: str, other: str, n: int = 30) -> float:
    """p50 of ``target`` timed right after a run of ``other``."""
    lat = []
    for _ in range(n):
        runs[other]()
        t0 = time.perf_counter()
        runs[target]()
        lat.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(lat)


def diagnose(bundle: Path, threads: int | None) -> None:
    import edgekit

    b = edgekit.Bundle(bundle)
    table = {}
    for spinning in (True, False):
        runs = _runners(b, threads, spinning)
        tag = "spinning" if spinning else "no spin"
        table[f"round-robin, all open, {tag}"] = _round_robin(runs)
        table[f"blocks, all open, {tag}"] = _blocks(runs)
        onnx = [k for k in runs if k.startswith("onnx")]
        tfl = [k for k in runs if k.startswith("tflite")]
        if onnx and tfl:
            alone = _blocks({tfl[0]: runs[tfl[0]]})[tfl[0]]
            after = _after_other(runs, tfl[0], onnx[0])
            print(f"{tfl[0]} alone {alone:.2f} ms, right after an {onnx[0]} run {after:.2f} ms ({tag})")
        del runs
    ids = list(next(iter(table.values())))
    print(f"\n{'p50 ms by method':<34} " + " ".join(f"{v:>12}" for v in ids))
    for name, row in table.items():
        print(f"{name:<34} " + " ".join(f"{row[v]:12.2f}" for v in ids))
    print()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="a bundle (default: the demo's EfficientNet-Lite0 bundle)")
    ap.add_argument("--threads", type=int, help="threads per variant (default: the runtime's)")
    ap.add_argument("--diagnose", action="store_true", help="first show where interleaved profiles lost time")
    # 5: on a shared VM a burst of host noise slows a whole round (standalone and profile alike) now and then;
    # with 3 rounds one such round could decide a variant's median
    ap.add_argument("--rounds", type=int, default=5, help="rounds of standalone benches and profiles (default 5)")
    args = ap.parse_args()
    bundle = args.bundle
    if bundle is None:
        from edgekit.apps import vision

        bundle = vision.prepare()
    if args.diagnose:
        diagnose(bundle, args.threads)
    return 0 if compare(bundle, args.threads, max(args.rounds, 1)) else 1


if __name__ == "__main__":
    sys.exit(main())
