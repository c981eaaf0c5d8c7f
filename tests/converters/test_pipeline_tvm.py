"""``edgekit convert`` with TVM kernels: --fallback-ops, --board, and targets that lack an op."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest

import edgekit
from edgekit.cli import main

from models import cumsum_model, ort_reference, save

pytest.importorskip("tvm")


def test_fallback_ops_make_composites_that_match_onnxruntime(tmp_path, bert_onnx):
    """Host kernels only; the rpi4 kernels of the same conversion are tests/tvm/test_pipeline_boards.py's."""
    b = edgekit.convert(bert_onnx, tmp_path / "b", targets=["onnx"], quantize=["fp32"], fallback_ops=["Erf"],
                        progress=False)
    (v,) = b.variants
    assert v.id == "onnx-fp32+tvm" and v.format == "composite" and v.passed
    assert v.validation["method"] == "runtime" and v.validation["max_abs"] < 1e-5  # fp32 kernels vs ORT
    folder = b.artifact(v)
    assert (folder / "plan.json").is_file()
    assert json.loads((folder / "plan.json").read_text())["boards"] == ["host"]
    sess = edgekit.load(b.path)
    assert sess.variant == v.id
    ids = np.random.default_rng(1).integers(0, 100, (1, 8)).astype(np.int64)
    got = sess.run({"input_ids": ids})["hidden"]
    np.testing.assert_allclose(got, ort_reference(bert_onnx, {"input_ids": ids})["hidden"], atol=1e-5)


def test_coreml_target_lacking_an_op_gets_tvm_segments(tmp_path):
    """CumSum is outside the ONNX->MIL table: the Core ML target becomes Core ML segments + TVM kernels."""
    from edgekit.converters import get_exporter

    if get_exporter("coreml").unavailable_reason():
        pytest.skip(get_exporter("coreml").unavailable_reason())
    src = save(cumsum_model(), tmp_path / "cumsum.onnx")
    b = edgekit.convert(src, tmp_path / "b", targets=["coreml"], quantize=["fp32"], progress=False)
    (v,) = b.variants
    assert v.id == "coreml-fp32+tvm" and v.format == "composite"
    plan = json.loads((b.artifact(v) / "plan.json").read_text())
    kinds = [(s["kind"], s["format"]) for s in plan["steps"]]
    assert ("runtime", "coreml") in kinds and ("tvm", "tvm") in kinds
    assert {"host", "apple-m1"} <= set(plan["boards"])
    # on Linux the Core ML segments are evaluated by their MIL graph check, the TVM kernels run for real
    expect = "runtime" if platform.system() == "Darwin" else "graph-check"
    assert v.validation["method"] == expect and v.passed
    assert v.validation["max_abs"] < 1e-4  # fp32 MIL evaluation + TVM fp32 kernels vs ORT


def test_cli_unknown_board_lists_known_ones(tmp_path, capsys, mlp_onnx):
    code = main(["convert", str(mlp_onnx), "-o", str(tmp_path / "b"), "--to", "onnx", "--board", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "rpi4" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_composite_variants_record_their_static_shapes(tmp_path, mlp_onnx):
    """TVM kernels are static: the composite variant's manifest specs are the plan's (batch 1), not N."""
    b = edgekit.convert(mlp_onnx, tmp_path / "b", targets=["onnx"], quantize=["fp32"], fallback_ops=["Relu"],
                        progress=False)
    (v,) = b.variants
    assert v.format == "composite" and v.inputs[0].shape == (1, 16)
    assert b.manifest["inputs"][0]["shape"] == ["N", 16]   # the source stays dynamic
    with pytest.raises(edgekit.InputError, match="dim 0 must be 1, got 2"):
        edgekit.load(b.path).run({"x": np.zeros((2, 16), np.float32)})
