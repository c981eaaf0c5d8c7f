"""ONNX node conformance through edgekit: pass rate of backends onnxruntime, tvm and auto (ORT + TVM fallback).

The cases come from ``onnx.backend.test.case.node.collect_testcases(None)`` (generated in-process). Each case's
model runs through ``edgekit.load`` with:
  * ``onnxruntime`` - the .onnx on ONNX Runtime;
  * ``tvm`` - the model compiled by TVM for the host (``compile_onnx``), run by the TVM backend;
  * ``auto`` - a composite (``build_composite(..., "onnx")``): nodes ONNX Runtime has no kernel for go to TVM.
Outputs are compared with the case's own rtol/atol. Cases with non-tensor inputs/outputs (sequences,
optionals) are counted apart. A worker process runs the cases so a native crash costs one case, not the run.
Printed: pass rate per backend and the cases where auto fails although one backend passes alone
(target, issue 4: none).

    python benchmarks/conformance.py [--limit N] [--stride K] [--time-cap SECONDS] [--filter SUBSTR] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

BACKENDS = ("onnxruntime", "tvm", "auto")


def _cases(filter_: str | None):
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    cases = sorted((c for c in cases if c.kind == "node" and c.model is not None), key=lambda c: c.name)
    return [c for c in cases if not filter_ or filter_ in c.name]


def _tensor_only(model) -> bool:
    return all(v.type.HasField("tensor_type") for v in (*model.graph.input, *model.graph.output))


def _compare(got: dict, expected: list, out_names: list[str], rtol: float, atol: float) -> str | None:
    for name, ref in zip(out_names, expected):
        ref = np.asarray(ref)
        if name not in got:
            return f"missing output {name}"
        g = np.asarray(got[name])
        if g.shape != ref.shape:
            return f"{name}: shape {g.shape} != {ref.shape}"
        if ref.dtype.kind in "OUS":
            if not np.array_equal(g.astype(str), ref.astype(str)):
                return f"{name}: strings differ"
            continue
        if g.dtype != ref.dtype:
            return f"{name}: dtype {g.dtype} != {ref.dtype}"
        try:
            np.testing.assert_allclose(g, ref, rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError:
            return f"{name}: values differ"
    return None


def _run_case(case, work: Path) -> dict:
    import onnx

    import edgekit
    from edgekit.converters.composite import build_composite
    from edgekit.converters.tvm_compile import compile_onnx, host_target

    model = case.model
    init = {t.name for t in model.graph.initializer}
    in_names = [v.name for v in model.graph.input if v.name not in init]
    out_names = [v.name for v in model.graph.output]
    inputs, expected = case.data_sets[0]
    feeds = {n: np.asarray(v) for n, v in zip(in_names, inputs)}
    path = work / f"{case.name}.onnx"
    onnx.save(model, str(path))
    res: dict[str, str | None] = {}

    def attempt(backend: str, open_fn) -> None:
        try:
            sess = open_fn()
            got = sess.run(feeds)
            res[backend] = _compare(got, expected, out_names, case.rtol, case.atol)
        except Exception as exc:  # noqa: BLE001 - any failure is a failed case, with its reason
            res[backend] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"

    attempt("onnxruntime", lambda: edgekit.load(path, backend="onnxruntime"))
    shapes = {n: list(np.shape(v)) for n, v in feeds.items()}
    attempt("tvm", lambda: edgekit.load(compile_onnx(model, work / f"{case.name}.tvm", host_target(), shapes),
                                        backend="tvm"))
    attempt("auto", lambda: edgekit.load(build_composite(path, work / f"{case.name}.auto", "onnx", boards=["host"],
                                                         input_shapes=shapes, validate=False, force=True)))
    return res


def _worker(indices: list[int], filter_: str | None, conn) -> None:
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    os.dup2(2, 1)  # TVM's frontend prints conversion errors on stdout: keep the report clean
    import logging

    logging.disable(logging.WARNING)
    cases = _cases(filter_)
    with tempfile.TemporaryDirectory(prefix="edgekit-conformance-") as tmp:
        for i in indices:
            case = cases[i]
            if not _tensor_only(case.model):
                conn.send((i, case.name, None))
                continue
            try:
                r = _run_case(case, Path(tmp))
            except Exception:  # noqa: BLE001 - a harness failure: record it on every backend
                msg = traceback.format_exc().splitlines()[-1]
                r = {b: f"harness: {msg}" for b in BACKENDS}
            conn.send((i, case.name, r))
    conn.close()


def run(limit: int | None, time_cap: float, filter_: str | None, case_timeout: float, stride: int = 1) -> dict:
    names = [c.name for c in _cases(filter_)]
    todo = list(range(0, len(names), max(1, stride)))[: limit or None]
    results: dict[str, dict | None] = {}
    t0 = time.monotonic()
    ctx = mp.get_context("spawn")
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="conformance", file=sys.stderr)
    except ImportError:  # pragma: no cover
        bar = None
    while todo and time.monotonic() - t0 < time_cap:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(todo, filter_, child), daemon=True)
        proc.start()
        child.close()
        while todo and time.monotonic() - t0 < time_cap:
            if not parent.poll(case_timeout):
                results[names[todo[0]]] = {b: "timeout or crash" for b in BACKENDS}
                todo.pop(0)
                proc.kill()
                break
            try:
                i, name, r = parent.recv()
            except EOFError:  # the worker died on the current case (native crash)
                results[names[todo[0]]] = {b: "crash" for b in BACKENDS}
                todo.pop(0)
                break
            results[name] = r
            todo.remove(i)
            if bar is not None:
                bar.update()
        proc.kill()
        proc.join()
    if bar is not None:
        bar.close()
    return {"results": results, "skipped_for_time": len(todo), "seconds": time.monotonic() - t0}


def summarize(out: dict) -> dict:
    res = {k: v for k, v in out["results"].items() if v is not None}
    n = len(res)
    passed = {b: sorted(k for k, v in res.items() if v.get(b) is None) for b in BACKENDS}
    either = set(passed["onnxruntime"]) | set(passed["tvm"])
    auto_misses = sorted(either - set(passed["auto"]))
    return {
        "cases": n, "non_tensor_cases": sum(1 for v in out["results"].values() if v is None),
        "not_run_time_cap": out["skipped_for_time"], "seconds": round(out["seconds"], 1),
        "pass_rate": {b: (len(passed[b]) / n if n else 0.0) for b in BACKENDS},
        "passed": {b: len(passed[b]) for b in BACKENDS}, "either_alone": len(either),
        "auto_misses": {k: res[k] for k in auto_misses},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, help="run only the first N cases (sorted by name)")
    ap.add_argument("--time-cap", type=float, default=1800, help="stop starting cases after this many seconds")
    ap.add_argument("--case-timeout", type=float, default=120, help="seconds one case may take")
    ap.add_argument("--stride", type=int, default=1, help="every K-th case (an even sample across all op types)")
    ap.add_argument("--filter", help="only cases whose name contains this")
    ap.add_argument("--json", action="store_true", help="print the full per-case results as JSON")
    args = ap.parse_args(argv)
    out = run(args.limit, args.time_cap, args.filter, args.case_timeout, args.stride)
    s = summarize(out)
    if args.json:
        print(json.dumps({"summary": s, "results": out["results"]}, indent=2))
        return 0
    print(f"{s['cases']} tensor cases ({s['non_tensor_cases']} non-tensor cases apart, "
          f"{s['not_run_time_cap']} not run: time cap) in {s['seconds']} s")
    for b in BACKENDS:
        print(f"  {b:12} {s['passed'][b]:5d} passed  {100 * s['pass_rate'][b]:5.1f}%")
    print(f"  either alone {s['either_alone']:5d}")
    print(f"auto misses a case one backend passes alone: {len(s['auto_misses'])} (target 0)")
    for k, v in list(s["auto_misses"].items())[:20]:
        print(f"  {k}: ort={v['onnxruntime']!r} tvm={v['tvm']!r} auto={v['auto']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
