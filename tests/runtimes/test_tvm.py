"""The facade on a TVM-compiled module: matches onnxruntime; a broken module is a ModelLoadError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import edgekit
from edgekit import InputError, ModelLoadError

from models import ort_reference, run_in_threads


def test_tvm_module_matches_onnxruntime(tvm_mlp, mlp_onnx):
    for path in (tvm_mlp, tvm_mlp.with_suffix(".json")):
        sess = edgekit.load(path)
        assert sess.backend == "tvm"
        assert sess.inputs[0].shape == (3, 16)
        x = np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)
        got = sess.run({"x": x})["logits"]
        ref = ort_reference(mlp_onnx, {"x": x})["logits"]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)  # TVM vs ORT fp32 kernels


def test_tvm_loads_runtime_only_and_leaves_no_switch_behind(tvm_mlp):
    """A fresh process that runs a TVM session maps TVM's runtime library but not its compiler, and neither it nor
    a child it starts keeps TVM_USE_RUNTIME_LIB: the child imports the full TVM (its compiler API is there)."""
    code = textwrap.dedent(f"""
        import json, os, subprocess, sys
        import numpy as np, edgekit
        edgekit.load({str(tvm_mlp)!r}).run({{'x': np.zeros((3, 16), np.float32)}})
        libs = {{os.path.basename(line.split()[-1]) for line in open('/proc/self/maps') if '.so' in line}}
        child = subprocess.run([sys.executable, '-c', 'import tvm, tvm.target.codegen as c; '
                                'print(tvm.base._RUNTIME_ONLY, bool(c.llvm_get_system_cpu()))'],
                               capture_output=True, text=True)
        print(json.dumps({{"runtime": "libtvm_runtime.so" in libs, "compiler": "libtvm_compiler.so" in libs,
                           "env": os.environ.get("TVM_USE_RUNTIME_LIB"), "child": child.stdout.split(),
                           "err": child.stderr[-500:]}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["runtime"] and not res["compiler"]  # the session loaded the runtime only
    assert res["env"] is None                      # the switch did not outlive the import
    assert res["child"] == ["False", "True"], res["err"]  # a child gets the compiler, and its API works


def test_tvm_bad_files(tmp_path, tvm_mlp):
    lonely = tmp_path / "lonely.so"
    lonely.write_bytes(tvm_mlp.read_bytes())
    with pytest.raises(ModelLoadError, match="no signature file lonely.json"):
        edgekit.load(lonely)
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"\x7fELF not really")
    meta = json.loads(tvm_mlp.with_suffix(".json").read_text())
    meta["library"] = "broken.so"
    (tmp_path / "broken.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="broken.so"):
        edgekit.load(tmp_path / "broken.json")
    meta["library"] = "../../etc/passwd"
    (tmp_path / "escape.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="leaves its folder"):
        edgekit.load(tmp_path / "escape.json")


def test_tvm_session_shared_between_threads(tvm_mlp, mlp_onnx):
    """A pool of Relax VMs serves concurrent calls; every thread gets its own input's result."""
    sess = edgekit.load(tvm_mlp)
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((3, 16)).astype(np.float32) for _ in range(6)]
    refs = [ort_reference(mlp_onnx, {"x": x})["logits"] for x in xs]

    def work(i):
        for _ in range(25):
            np.testing.assert_allclose(sess.run({"x": xs[i]})["logits"], refs[i], rtol=1e-5, atol=1e-5)

    run_in_threads(work, range(6))


def _run_child(code: str, env: dict) -> dict:
    """Run ``code`` in a fresh Python (TVM sizes its thread pools once per process thread) and parse its JSON."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


_CHILD_SETUP = """
    import json, threading, warnings
    import numpy as np
    import edgekit
    from edgekit.runtimes.tvm import import_tvm_runtime

    LIB, SRC = {lib!r}, {src!r}
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    def workers():  # TVM's own count of the calling thread's pool workers
        return int(import_tvm_runtime()[0].get_global_func("runtime.NumThreads")())
    def in_thread(fn):
        box = {{}}
        t = threading.Thread(target=lambda: box.update(v=fn()))
        t.start(); t.join()
        return box["v"]
"""


def test_tvm_threads_apply_per_session(tvm_mlp, mlp_onnx):
    """Sessions with different ``threads`` share a process and a thread: each call runs on its own count."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    res = _run_child(_CHILD_SETUP.format(lib=str(tvm_mlp), src=str(mlp_onnx)) + """
    one, two, plain = (edgekit.load(LIB, threads=1), edgekit.load(LIB, threads=2), edgekit.load(LIB))
    fresh = in_thread(workers)  # what a thread's pool holds before edgekit sets it
    seen, outs = [], []
    for s in (two, one, two, plain, one):
        outs.append(s.run({"x": x})["logits"].tolist())
        seen.append(workers())
    other = in_thread(lambda: (two.run({"x": x}), workers())[1])
    print(json.dumps({"seen": seen, "fresh": fresh, "other": other, "outs": outs}))
    """, env)
    assert res["seen"] == [2, 1, 2, res["fresh"], 1]  # threads=N gives N workers, no threads gives TVM's own
    assert res["other"] == 2                           # another thread's pool is set on its first call too
    ref = ort_reference(mlp_onnx, {"x": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)})
    for got in res["outs"]:
        np.testing.assert_allclose(np.array(got, np.float32), ref["logits"], rtol=1e-5, atol=1e-5)  # TVM vs ORT


def test_tvm_threads_beyond_a_sized_pool_warn(tvm_mlp, mlp_onnx):
    """A thread whose pool TVM sized to 1 before (TVM_NUM_THREADS=1) cannot grow: the session says so."""
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    res = _run_child(_CHILD_SETUP.format(lib=str(tvm_mlp), src=str(mlp_onnx)) + """
    edgekit.load(LIB).run({"x": x})  # sizes this thread's pool at 1
    two = edgekit.load(LIB, threads=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        two.run({"x": x}); two.run({"x": x})
    print(json.dumps({"here": workers(), "other": in_thread(lambda: (two.run({"x": x}), workers())[1]),
                      "warnings": [str(w.message) for w in caught if w.category is RuntimeWarning]}))
    """, env)
    assert res["here"] == 1 and res["other"] == 2
    assert len(res["warnings"]) == 1 and "threads=2 asked, but this thread's TVM pool holds 1" in res["warnings"][0]


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5, True])
def test_tvm_bad_threads(tvm_mlp, bad):
    with pytest.raises(InputError, match="threads must be an integer >= 1"):
        edgekit.load(tvm_mlp, threads=bad)
