"""TVM cannot take edgekit down or break it: compiles run in a child process (a real crash or hang there is a
ConversionError naming the work, the target and the signal), a runtime-only TVM in the process does not stop later
compiles, composites on dynamic dims ask for --input-shape, and reopening sessions does not leak their weights."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.cli import main
from edgekit.converters.composite import build_composite
from edgekit.converters.tvm_child import CRASH_ENV, TIMEOUT_ENV
from edgekit.converters.tvm_compile import compile_onnx, host_target
from edgekit.errors import ConversionError, RunError

import models

ATOL = 1e-5  # fp32 TVM kernels vs ONNX Runtime on these small models


def _mlp_x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 16)).astype(np.float32)


def test_crash_in_the_compiler_child_is_an_error_and_the_caller_lives_on(tvm_models, tmp_path, monkeypatch, capsys):
    """The child really dies of SIGSEGV (EDGEKIT_TEST_CRASH_TVM_CHILD): segment and whole-model compiles fail with
    a ConversionError naming segment, ops, board and signal; the next compile works in this same process."""
    monkeypatch.setenv(CRASH_ENV, "segv")
    with pytest.raises(ConversionError, match=r"TVM crashed \(SIGSEGV\) compiling segment 1 \(ops: Relu\) for host"
                       ) as info:
        build_composite(tvm_models["mlp1"], tmp_path / "comp", "onnx", fallback_ops=["Relu"])
    assert not (tmp_path / "comp").exists()
    log = Path(re.search(r"its output: (\S+\.log)", str(info.value)).group(1))  # the child's crash backtrace
    assert "Segfault" in log.read_text()
    log.unlink()
    assert main(["compile", str(tvm_models["mlp1"]), "-o", str(tmp_path / "whole")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "TVM crashed (SIGSEGV) compiling tvm_mlp1.onnx for host" in last and "Traceback" not in last
    Path(re.search(r"its output: (\S+\.log)", last).group(1)).unlink()
    monkeypatch.delenv(CRASH_ENV)
    lib = compile_onnx(tvm_models["mlp1"], tmp_path / "after", shape_dict={"x": [1, 16]})
    ref = models.ort_reference(tvm_models["mlp1"], {"x": _mlp_x()})["logits"]
    np.testing.assert_allclose(edgekit.load(lib).run({"x": _mlp_x()})["logits"], ref, atol=ATOL, rtol=ATOL)


def test_hung_compiler_child_is_stopped_after_the_timeout(tvm_models, tmp_path, monkeypatch):
    host_target()  # warm: the 3 s limit below then only covers the hung compile
    monkeypatch.setenv(CRASH_ENV, "hang")
    monkeypatch.setenv(TIMEOUT_ENV, "3")
    start = time.monotonic()
    with pytest.raises(ConversionError, match=r"TVM hung: no result after 3 s compiling segment 1 \(ops: Relu\)"):
        build_composite(tvm_models["mlp1"], tmp_path / "comp", "onnx", fallback_ops=["Relu"])
    assert time.monotonic() - start < 60


def test_composite_on_dynamic_dims_names_the_input_and_the_flag(tmp_path):
    """Guessing dynamic dims as 1 breaks this model's shapes: the error names the input and --input-shape, and
    giving the shape builds a composite that matches ONNX Runtime."""
    src = models.save(models.split_needs_height(), tmp_path / "split.onnx")
    with pytest.raises(ConversionError, match=r"input\(s\) x \[1,3,H,W\] were set to 1.*--input-shape x=1,3,H,W"):
        build_composite(src, tmp_path / "guessed", "onnx", fallback_ops=["Relu"])
    plan = build_composite(src, tmp_path / "given", "onnx", fallback_ops=["Relu"], input_shapes={"x": [1, 3, 4, 5]})
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32)
    got = edgekit.load(plan).run({"x": x})["y"]
    np.testing.assert_allclose(got, models.ort_reference(src, {"x": x})["y"], atol=ATOL, rtol=ATOL)


_ORDERS = """
    import json, os, subprocess, sys
    import numpy as np
    import edgekit
    from edgekit.cli import main
    from edgekit.converters.tvm_compile import compile_onnx

    SRC, OUT = {src!r}, {out!r}
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    a = compile_onnx(SRC, OUT + "/a")                           # compile, then load
    ya = edgekit.load(a).run({{"x": x}})["logits"]
    runtime_only = bool(sys.modules["tvm"].base._RUNTIME_ONLY)  # the session loaded TVM's runtime only
    try:                                                        # the compiler asked for in this process: clear error
        from edgekit.converters.tvm_compile import require_compiler
        require_compiler()
        in_process = "no error"
    except edgekit.EdgekitError as exc:
        in_process = type(exc).__name__ + ": " + str(exc)
    code_b = main(["compile", SRC, "-o", OUT + "/b"])            # load, then compile in this process
    child = subprocess.run([sys.executable, "-m", "edgekit.cli", "compile", SRC, "-o", OUT + "/c"],
                           capture_output=True, text=True)      # load, then compile in a child process
    outs = [ya.tolist()] + [edgekit.load(OUT + f"/{{n}}.so").run({{"x": x}})["logits"].tolist() for n in "bc"]
    print(json.dumps({{"runtime_only": runtime_only, "b": code_b, "c": child.returncode, "c_err": child.stderr[-800:],
                      "env": os.environ.get("TVM_USE_RUNTIME_LIB"), "outs": outs, "in_process": in_process}}))
"""


def test_compile_and_load_in_either_order_in_one_process_and_across_a_child(tvm_models, tmp_path):
    """Issue 13: after a TVM session is loaded (runtime-only TVM), compiling in the same process or in a child
    still works; compiling first does not stop a later load either. A fresh interpreter runs the sequence."""
    code = textwrap.dedent(_ORDERS.format(src=str(tvm_models["mlp1"]), out=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_USE_RUNTIME_LIB", CRASH_ENV)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["runtime_only"] and res["env"] is None
    assert res["in_process"].startswith("ConversionError: the TVM compiler is not available in this process")
    assert res["b"] == 0 and res["c"] == 0, res["c_err"]
    ref = models.ort_reference(tvm_models["mlp1"], {"x": _mlp_x()})["logits"]
    for got in res["outs"]:
        np.testing.assert_allclose(np.array(got, np.float32), ref, atol=ATOL, rtol=ATOL)  # TVM fp32 vs ORT


def _rss_growth(cycle, warmup: int = 20, cycles: int = 300) -> float:
    """RSS growth in MB over ``cycles`` calls of ``cycle`` after ``warmup`` calls."""
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    for _ in range(warmup):
        cycle()
    gc.collect()
    before = proc.memory_info().rss
    for _ in range(cycles):
        cycle()
    gc.collect()
    return (proc.memory_info().rss - before) / 2**20


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A ~1 MB-weight MLP: leaking the weights per open would grow RSS ~300 MB over 300 opens."""
    folder = tmp_path_factory.mktemp("wide")
    src = models.save(models.wide_mlp(), folder / "wide.onnx")
    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    return src, x, models.ort_reference(src, {"x": x})["y"], folder


def test_reopening_a_tvm_session_300_times_keeps_memory_flat(wide):
    src, x, ref, folder = wide
    lib = compile_onnx(src, folder / "wide_tvm")

    def cycle():
        with edgekit.load(lib) as sess:
            np.testing.assert_allclose(sess.run({"x": x})["y"], ref, atol=1e-4, rtol=1e-4)  # fp32 TVM vs ORT

    assert _rss_growth(cycle) < 30  # MB; ~1 MB per open before the per-file module cache
    sess = edgekit.load(lib)
    sess.close()
    with pytest.raises(RunError, match="closed"):
        sess.run({"x": x})


def test_reopening_a_composite_300_times_keeps_memory_flat(wide):
    src, x, ref, folder = wide
    plan = build_composite(src, folder / "wide_comp", "onnx", fallback_ops=["MatMul"])  # the weights in TVM

    def cycle():
        with edgekit.load(plan) as sess:
            np.testing.assert_allclose(sess.run({"x": x})["y"], ref, atol=1e-4, rtol=1e-4)  # fp32 TVM + ORT vs ORT

    assert _rss_growth(cycle) < 30  # MB
