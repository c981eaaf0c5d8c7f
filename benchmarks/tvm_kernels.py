"""TVM fallback kernels vs ONNX Runtime's kernels on the same subgraphs, as ratios measured in one run.

A composite is built (ONNX target, ``--fallback-ops`` forced onto TVM, untuned host kernels). For each
fallback segment, its ONNX subgraph runs on raw ONNX Runtime and its TVM library on the raw Relax VM
(inputs already on the device, 1 thread each), interleaved in rounds so both see the same machine load.
Printed per segment: median latency of each and the ratio TVM/ORT (< 1 = TVM faster). The last row per
model is the whole composite through ``edgekit.load`` vs the whole model on ORT.
Target (issue 4): every segment within 2x untuned (ratio <= 2).

    python benchmarks/tvm_kernels.py [MODEL.onnx] [--fallback-ops Softmax,Erf] [--iters 300] [--json]

Without MODEL, a BERT-like block (seq 128, hidden 256) and a CNN (64x64) are built in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TVM_NUM_THREADS", "1")


def _ort(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _timed(fn, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _interleaved(fns: dict, iters: int, rounds: int = 5) -> dict[str, np.ndarray]:
    """Run each callable ``iters/rounds`` times per round, alternating, after a warm-up."""
    for f in fns.values():
        for _ in range(10):
            f()
    res: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            res[k] += _timed(f, max(1, iters // rounds))
    return {k: np.array(v) for k, v in res.items()}


def bench_model(onnx_path: Path, fallback_ops: list[str], iters: int, work: Path) -> list[dict]:
    import edgekit
    from edgekit.converters.composite import build_composite
    from edgekit.runtimes.tvm import import_tvm_runtime, read_signature
    from edgekit.specs import random_feeds

    plan_path = build_composite(onnx_path, work / f"{onnx_path.stem}_composite", "onnx", fallback_ops,
                                boards=["host"], force=True)
    plan = json.loads(plan_path.read_text())
    folder = plan_path.parent
    tvm, VirtualMachine = import_tvm_runtime()
    rows = []
    for step in plan["steps"]:
        if step["kind"] != "tvm":
            continue
        seg_onnx = folder / "segments" / f"{step['name']}.onnx"
        sess = _ort(seg_onnx)
        meta, lib_path = read_signature(folder / step["artifacts"]["host"])
        vm = VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())
        from edgekit.specs import TensorSpec

        specs = [TensorSpec.from_json(s) for s in meta["inputs"]]
        feeds = random_feeds(specs, seed=0)
        args = [tvm.runtime.tensor(feeds[s.name]) for s in specs]
        names = [o.name for o in sess.get_outputs()]
        ref = sess.run(names, feeds)
        got = vm["main"](*args)
        got = [got] if hasattr(got, "numpy") else list(got)
        err = max(float(np.max(np.abs(g.numpy() - r))) for g, r in zip(got, ref))
        t = _interleaved({"ort": lambda s=sess, n=names, f=feeds: s.run(n, f),
                          "tvm": lambda v=vm, a=args: v["main"](*a)}, iters)
        rows.append(_row(f"{onnx_path.stem}/{step['name']}", step["ops"], t, err))
    # the whole composite through the facade vs the whole model on ORT
    whole = _ort(onnx_path)
    comp = edgekit.load(plan_path, threads=1)
    feeds = random_feeds(comp.inputs, seed=0)
    names = [o.name for o in whole.get_outputs()]
    err = max(float(np.max(np.abs(comp.run(feeds)[n] - r))) for n, r in zip(names, whole.run(names, feeds)))
    t = _interleaved({"ort": lambda: whole.run(names, feeds), "tvm": lambda: comp.run(feeds)}, iters)
    rows.append(_row(f"{onnx_path.stem}/composite-vs-ort", {"steps": len(plan["steps"])}, t, err))
    return rows


def _row(name: str, ops: dict, t: dict, err: float) -> dict:
    med = {k: float(np.median(v)) for k, v in t.items()}
    return {"segment": name, "ops": ops, "ort_ms": med["ort"], "tvm_ms": med["tvm"],
            "ort_p90_ms": float(np.percentile(t["ort"], 90)), "tvm_p90_ms": float(np.percentile(t["tvm"], 90)),
            "ratio_tvm_over_ort": med["tvm"] / med["ort"], "max_abs_err": err}


def _default_models(work: Path) -> list[tuple[Path, list[str]]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import models

    bert = models.save(models.bert_block(seq=128, hidden=256, vocab=1000), work / "bert_s128_h256.onnx")
    cnn = models.save(models.cnn(size=64), work / "cnn64.onnx")
    return [(bert, ["Softmax", "Erf", "LayerNormalization"]), (cnn, ["Conv", "Softmax"])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--fallback-ops", default="Softmax,Erf")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgekit-tvmbench-") as tmp:
        work = Path(tmp)
        jobs = [(args.model, args.fallback_ops.split(","))] if args.model else _default_models(work)
        rows = []
        for path, ops in jobs:
            rows += bench_model(path, ops, args.iters, work)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'segment':34} {'ops':34} {'ORT ms':>8} {'TVM ms':>8} {'TVM/ORT':>8} {'max err':>9}")
    for r in rows:
        ops = ",".join(f"{k}x{v}" for k, v in r["ops"].items())[:34]
        print(f"{r['segment']:34} {ops:34} {r['ort_ms']:8.4f} {r['tvm_ms']:8.4f} {r['ratio_tvm_over_ort']:8.2f} "
              f"{r['max_abs_err']:9.2e}")
    seg = [r for r in rows if not r["segment"].endswith("composite-vs-ort")]
    worst = max(r["ratio_tvm_over_ort"] for r in seg) if seg else float("nan")
    print(f"worst segment ratio TVM/ORT (untuned): {worst:.2f}  (target <= 2.0: {'met' if worst <= 2 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
