"""``edgekit convert --fallback-ops ... --board rpi4``: the composite carries aarch64 kernels beside the host's.

Needs the aarch64 cross compiler (the ``cross_cc`` fixture installs it under CI, skips with the reason elsewhere and
fails under ``CI=true`` when it is still missing).
"""

from __future__ import annotations

import json

import numpy as np

import edgekit
from edgekit.converters.tvm_compile import binary_arch

from models import ort_reference


def test_convert_with_a_board_ships_aarch64_kernels(tmp_path, tvm_models, cross_cc):
    src = tvm_models["bert"]
    b = edgekit.convert(src, tmp_path / "b", targets=["onnx"], quantize=["fp32"], fallback_ops=["Erf"],
                        boards=["rpi4"], progress=False)
    (v,) = b.variants
    assert v.id == "onnx-fp32+tvm" and v.passed
    folder = b.artifact(v)
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["boards"] == ["host", "rpi4"]
    (step,) = [s for s in plan["steps"] if s["kind"] == "tvm"]
    rpi = json.loads((folder / step["artifacts"]["rpi4"]).read_text())
    assert binary_arch(folder / rpi["library"]) == ("elf", "aarch64") and rpi["board"] == "rpi4"
    # on this machine the host kernels run and match ONNX Runtime
    ids = np.random.default_rng(1).integers(0, 100, (1, 8)).astype(np.int64)
    got = edgekit.load(b.path).run({"input_ids": ids})["hidden"]
    np.testing.assert_allclose(got, ort_reference(src, {"input_ids": ids})["hidden"], atol=1e-5)  # fp32 vs ORT
