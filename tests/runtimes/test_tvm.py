"""The facade on a TVM-compiled module: matches onnxruntime; a broken module is a ModelLoadError."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import edgekit
from edgekit import ModelLoadError

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


def test_tvm_loads_runtime_only(tvm_mlp):
    code = (
        "import sys, numpy as np, edgekit;"
        f"s = edgekit.load({str(tvm_mlp)!r});"
        "s.run({'x': np.zeros((3, 16), np.float32)});"
        "import os; print(os.environ.get('TVM_USE_RUNTIME_LIB'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


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
