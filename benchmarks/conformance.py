"""ONNX node conformance through edgekit: pass rate of raw ONNX Runtime and of backends onnxruntime, tvm and auto.

The cases come from ``onnx.backend.test.case.node.collect_testcases(None)`` (generated in-process). Each case's
model runs:
  * ``raw-onnxruntime`` - ``onnxruntime.InferenceSession(...).run`` on the case's own inputs, no edgekit (the
    runtime's own reach: a float8 output it hands back as its uint8 bits counts as passed);
  * ``onnxruntime`` - the .onnx through ``edgekit.load(..., backend="onnxruntime")`` (target, issue 13: every
    case raw ONNX Runtime passes);
  * ``tvm`` - the model compiled by TVM for the host (``compile_onnx``), run by the TVM backend;
  * ``auto`` - a composite (``build_composite(..., "onnx")``): nodes ONNX Runtime has no kernel for go to TVM.
Outputs are compared with the case's own rtol/atol. Cases with sequence or optional inputs/outputs run on the
ONNX Runtime rows only (counted apart). A worker process runs the cases so a native crash costs one case.
Printed: pass rate per backend, the cases raw ONNX Runtime passes and the facade does not, and the cases where
auto fails although one backend passes alone (target, issue 4: none).

    python benchmarks/conformance.py [--backends raw-onnxruntime,onnxruntime] [--limit N] [--stride K]
        [--time-cap SECONDS] [--filter SUBSTR] [--json]
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

BACKENDS = ("raw-onnxruntime", "onnxruntime", "tvm", "auto")
#: rows that run cases with sequence or optional I/O
ANY_IO = ("raw-onnxruntime", "onnxruntime")
NOT_RUN = "not run"


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
        if name not in got:
            return f"missing output {name}"
        err = _compare_value(name, got[name], ref, rtol, atol)
        if err:
            return err
    return None


def _compare_value(name: str, got, ref, rtol: float, atol: float) -> str | None:
    """None when ``got`` matches ``ref``: a tensor, a sequence (list) of tensors, or None (an empty optional)."""
    if ref is None or got is None:
        return None if ref is None and got is None else f"{name}: optional {got is None} != {ref is None}"
    if isinstance(ref, list):
        if not isinstance(got, list) or len(got) != len(ref):
            return f"{name}: sequence of {len(ref)} expected, got {type(got).__name__}"
        return next((e for i, (g, r) in enumerate(zip(got, ref))
                     if (e := _compare_value(f"{name}[{i}]", g, r, rtol, atol))), None)
    g, ref = np.asarray(got), np.asarray(ref)
    if g.shape != ref.shape:
        return f"{name}: shape {g.shape} != {ref.shape}"
    if ref.dtype.kind in "OUS":
        return None if np.array_equal(g.astype(str), ref.astype(str)) else f"{name}: strings differ"
    if g.dtype != ref.dtype:
        return f"{name}: dtype {g.dtype} != {ref.dtype}"
    if _is_ml(ref.dtype):  # ml_dtypes (bfloat16, float8, int4 ...): compare as float32
        g, ref = g.astype(np.float32), ref.astype(np.float32)
    try:
        np.testing.assert_allclose(g, ref, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError:
        return f"{name}: values differ"
    return None


def _value(v):
    """A case's input or output as numpy: some cases hold TensorProto/SequenceProto/OptionalProto messages."""
    from onnx import OptionalProto, SequenceProto, TensorProto, numpy_helper

    if isinstance(v, TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, SequenceProto):
        return numpy_helper.to_list(v)
    if isinstance(v, OptionalProto):
        return numpy_helper.to_optional(v)
    return v


def _raw_ort(path: Path, feeds: dict, ref_dtypes: list) -> list:
    """ONNX Runtime on its own; a float8 output handed back as uint8 bits is viewed as the expected dtype."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    return [o.view(d) if isinstance(o, np.ndarray) and d is not None and _is_ml(d) and o.dtype.kind == "u"
            and o.dtype.itemsize == d.itemsize else o for o, d in zip(outs, ref_dtypes)]


def _is_ml(dtype: np.dtype) -> bool:
    """An ml_dtypes dtype (bfloat16, float8, int4 ...)."""
    return dtype.type.__module__.startswith("ml_dtypes")


def _run_case(case, work: Path, backends: tuple[str, ...]) -> dict:
    import onnx

    import edgekit

    model = case.model
    init = {t.name for t in model.graph.initializer}
    in_names = [v.name for v in model.graph.input if v.name not in init]
    out_names = [v.name for v in model.graph.output]
    inputs, expected = (list(map(_value, vs)) for vs in case.data_sets[0])
    feeds = {n: v if isinstance(v, list) or v is None else np.asarray(v) for n, v in zip(in_names, inputs)}
    path = work / f"{case.name}.onnx"
    onnx.save(model, str(path))
    tensor_only = _tensor_only(model)
    res: dict[str, str | None] = {b: NOT_RUN for b in BACKENDS}

    def attempt(backend: str, run_fn) -> None:
        if backend not in backends or not (tensor_only or backend in ANY_IO):
            return
        try:
            res[backend] = _compare(run_fn(), expected, out_names, case.rtol, case.atol)
        except Exception as exc:  # noqa: BLE001 - any failure is a failed case, with its reason
            res[backend] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"

    ref_dtypes = [getattr(e, "dtype", None) for e in expected]
    attempt("raw-onnxruntime", lambda: dict(zip(out_names, _raw_ort(path, feeds, ref_dtypes))))
    attempt("onnxruntime", lambda: edgekit.load(path, backend="onnxruntime").run(feeds))
    def shapes() -> dict:
        return {n: list(np.shape(v)) for n, v in feeds.items()}

    def tvm():
        from edgekit.converters.tvm_compile import compile_onnx, host_target

        return edgekit.load(compile_onnx(model, work / f"{case.name}.tvm", host_target(), shapes()),
                            backend="tvm").run(feeds)

    def auto():
        from edgekit.converters.composite import build_composite

        return edgekit.load(build_composite(path, work / f"{case.name}.auto", "onnx", boards=["host"],
                                            input_shapes=shapes(), validate=False, force=True)).run(feeds)

    attempt("tvm", tvm)
    attempt("auto", auto)
    return res


def _worker(indices: list[int], filter_: str | None, backends: tuple[str, ...], conn) -> None:
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    os.dup2(2, 1)  # TVM's frontend prints conversion errors on stdout: keep the report clean
    import logging

    logging.disable(logging.WARNING)
    cases = _cases(filter_)
    with tempfile.TemporaryDirectory(prefix="edgekit-conformance-") as tmp:
        for i in indices:
            case = cases[i]
            try:
                r = _run_case(case, Path(tmp), backends)
            except Exception:  # noqa: BLE001 - a harness failure: record it on every backend
                msg = traceback.format_exc().splitlines()[-1]
                r = {b: f"harness: {msg}" if b in backends else NOT_RUN for b in BACKENDS}
            r["tensor_only"] = _tensor_only(case.model)
            conn.send((i, case.name, r))
    conn.close()


def run(limit: int | None, time_cap: float, filter_: str | None, case_timeout: float, stride: int = 1,
        backends: tuple[str, ...] = BACKENDS) -> dict:
    names = [c.name for c in _cases(filter_)]
    todo = list(range(0, len(names), max(1, stride)))[: limit or None]
    results: dict[str, dict] = {}
    t0 = time.monotonic()
    ctx = mp.get_context("spawn")
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="conformance", file=sys.stderr)
    except ImportError:  # pragma: no cover
        bar = None
    while todo and time.monotonic() - t0 < time_cap:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(todo, filter_, backends, child), daemon=True)
        proc.start()
        child.close()
        while todo and time.monotonic() - t0 < time_cap:
            if not parent.poll(case_timeout):
                results[names[todo[0]]] = {b: "timeout or crash" if b in backends else NOT_RUN for b in BACKENDS}
                todo.pop(0)
                proc.kill()
                break
            try:
                i, name, r = parent.recv()
            except EOFError:  # the worker died on the current case (native crash)
                results[names[todo[0]]] = {b: "crash" if b in backends else NOT_RUN for b in BACKENDS}
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
    res = out["results"]
    ran = [b for b in BACKENDS if any(v.get(b) != NOT_RUN for v in res.values())]
    passed = {b: sorted(k for k, v in res.items() if v.get(b) is None) for b in ran}
    runs = {b: sum(1 for v in res.values() if v.get(b) != NOT_RUN) for b in ran}
    either = set(passed.get("onnxruntime", ())) | set(passed.get("tvm", ()))
    auto_misses = sorted(either - set(passed["auto"])) if "auto" in ran else []
    facade_misses = (sorted(set(passed["raw-onnxruntime"]) - set(passed["onnxruntime"]))
                     if {"raw-onnxruntime", "onnxruntime"} <= set(ran) else [])
    return {
        "cases": len(res), "non_tensor_cases": sum(1 for v in res.values() if not v.get("tensor_only", True)),
        "not_run_time_cap": out["skipped_for_time"], "seconds": round(out["seconds"], 1),
        "pass_rate": {b: (len(passed[b]) / runs[b] if runs[b] else 0.0) for b in ran},
        "passed": {b: len(passed[b]) for b in ran}, "run": runs, "either_alone": len(either),
        "auto_misses": {k: res[k] for k in auto_misses}, "facade_misses": {k: res[k] for k in facade_misses},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated rows of {', '.join(BACKENDS)}")
    ap.add_argument("--limit", type=int, help="run only the first N cases (sorted by name)")
    ap.add_argument("--time-cap", type=float, default=1800, help="stop starting cases after this many seconds")
    ap.add_argument("--case-timeout", type=float, default=120, help="seconds one case may take")
    ap.add_argument("--stride", type=int, default=1, help="every K-th case (an even sample across all op types)")
    ap.add_argument("--filter", help="only cases whose name contains this")
    ap.add_argument("--json", action="store_true", help="print the full per-case results as JSON")
    args = ap.parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        ap.error(f"unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    out = run(args.limit, args.time_cap, args.filter, args.case_timeout, args.stride, backends)
    s = summarize(out)
    if args.json:
        print(json.dumps({"summary": s, "results": out["results"]}, indent=2))
        return 0
    print(f"{s['cases']} cases ({s['non_tensor_cases']} with sequence/optional I/O, run on the ONNX Runtime rows "
          f"only; {s['not_run_time_cap']} not run: time cap) in {s['seconds']} s")
    for b, n in s["passed"].items():
        print(f"  {b:16} {n:5d} of {s['run'][b]:5d} passed  {100 * s['pass_rate'][b]:5.1f}%")
    if "tvm" in s["passed"] and "onnxruntime" in s["passed"]:
        print(f"  either alone     {s['either_alone']:5d}")
    if "raw-onnxruntime" in s["passed"] and "onnxruntime" in s["passed"]:
        print(f"facade misses a case raw ONNX Runtime passes: {len(s['facade_misses'])} (target 0)")
        for k, v in list(s["facade_misses"].items())[:20]:
            print(f"  {k}: facade={v['onnxruntime']!r}")
    if "auto" in s["passed"]:
        print(f"auto misses a case one backend passes alone: {len(s['auto_misses'])} (target 0)")
        for k, v in list(s["auto_misses"].items())[:20]:
            print(f"  {k}: ort={v['onnxruntime']!r} tvm={v['tvm']!r} auto={v['auto']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
