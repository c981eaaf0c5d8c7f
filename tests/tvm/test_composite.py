"""Composites: runtime segments + TVM kernels per board, run through edgekit.load, checked against ORT."""

from __future__ import annotations

import json
import sys
import tarfile

import numpy as np
import pytest

import edgekit
from edgekit.converters.tvm_compile import binary_arch
from edgekit.errors import InputError, ModelLoadError
from edgekit.formats import detect_format

import models

ATOL = 1e-5  # fp32 end to end: ORT and TVM kernels agree to ~1e-6 on these tiny models


def _feeds(seed=0):
    return {"input_ids": np.random.default_rng(seed).integers(0, 100, (1, 8)).astype(np.int64)}


def test_bert_composite_matches_onnxruntime(bert_composite, tvm_models):
    sess = edgekit.load(bert_composite)
    assert sess.format == "composite" and sess.backend == "composite"
    for seed in range(3):
        feeds = _feeds(seed)
        ref = models.ort_reference(tvm_models["bert"], feeds)["hidden"]
        got = sess.run(feeds)["hidden"]
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=1e-5)
    # the folder and plan.json open the same way
    assert detect_format(bert_composite.parent) == "composite" == detect_format(bert_composite)
    got_dir = edgekit.load(bert_composite.parent).run(_feeds(0))["hidden"]
    np.testing.assert_allclose(got_dir, models.ort_reference(tvm_models["bert"], _feeds(0))["hidden"], atol=ATOL)


def test_plan_describes_steps_handoffs_and_boards(bert_composite):
    plan = json.loads(bert_composite.read_text())
    assert plan["format"] == "edgekit-composite" and plan["boards"] == ["host", "rpi4"]
    assert [s["kind"] for s in plan["steps"]] == ["runtime", "tvm", "runtime", "tvm", "runtime"]
    tvm_steps = [s for s in plan["steps"] if s["kind"] == "tvm"]
    assert [set(s["ops"]) for s in tvm_steps] == [{"Softmax"}, {"Erf"}]
    assert all("forced" in r for s in tvm_steps for r in s["reasons"].values())
    # every hand-off names its producer, consumers, shape and dtype; consumers list it as an input
    steps = {s["name"]: s for s in plan["steps"]}
    for t in plan["tensors"]:
        assert t["dtype"] == "float32" and all(isinstance(d, int) for d in t["shape"])
        assert t["name"] in {o["name"] for o in steps[t["from"]]["outputs"]}
        for user in t["to"]:
            assert t["name"] in {i["name"] for i in steps[user]["inputs"]}
    assert plan["validation"]["checked"] and max(plan["validation"]["max_abs_error"].values()) < 1e-4
    # per-board kernels: host x86_64 ELF, rpi4 aarch64 ELF (magic bytes + e_machine)
    folder = bert_composite.parent
    for s in tvm_steps:
        host = json.loads((folder / s["artifacts"]["host"]).read_text())
        rpi = json.loads((folder / s["artifacts"]["rpi4"]).read_text())
        assert (folder / rpi["library"]).read_bytes()[:4] == b"\x7fELF"
        assert binary_arch(folder / rpi["library"]) == ("elf", "aarch64")
        assert binary_arch(folder / host["library"])[0] == "elf"
        assert rpi["target"]["mtriple"] == "aarch64-linux-gnu"


def test_composite_board_choice_and_output_selection(bert_composite):
    from edgekit.runtimes.composite import CompositeBackend

    with pytest.raises(InputError, match="board 'rpi5' has no kernels.*host, rpi4"):
        edgekit.load(bert_composite, board="rpi5")
    sess = edgekit.load(bert_composite, board="host")
    assert list(sess.run(_feeds(), outputs=["hidden"])) == ["hidden"]
    info = CompositeBackend().inspect(bert_composite)
    assert info["ops"]["Softmax"] == 1 and info["handoffs"] == len(json.loads(bert_composite.read_text())["tensors"])


def test_broken_plan_is_a_load_error(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"format": "edgekit-composite", "steps": []}))
    with pytest.raises(ModelLoadError, match="no steps"):
        edgekit.load(bad)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "plan.json").write_text(json.dumps({"format": "edgekit-composite", "version": 1,
        "boards": ["host"], "inputs": [], "outputs": [], "steps": [
            {"name": "s", "kind": "runtime", "format": "onnx", "artifacts": {"any": "../../etc/passwd"},
             "inputs": [], "outputs": []}]}))
    with pytest.raises(ModelLoadError, match="leaves the composite folder"):
        edgekit.load(tmp_path / "x")


def test_cumsum_for_coreml_gets_tvm_segments_and_apple_objects(coreml_cumsum_composite):
    plan = json.loads(coreml_cumsum_composite.read_text())
    assert [(s["kind"], s["format"]) for s in plan["steps"]] == [
        ("runtime", "coreml"), ("tvm", "tvm"), ("runtime", "coreml")]
    tvm_step = plan["steps"][1]
    assert set(tvm_step["ops"]) == {"CumSum"} and "not in the coreml op table" in tvm_step["reasons"]["CumSum"]
    assert set(tvm_step["artifacts"]) == {"host", "apple-m1", "apple-m1:metal"}
    folder = coreml_cumsum_composite.parent
    apple = json.loads((folder / tvm_step["artifacts"]["apple-m1"]).read_text())
    assert apple["target"]["mtriple"] == "arm64-apple-macos"
    # Mach-O 64-bit (0xfeedfacf little-endian), CPU type arm64, inside the object archive
    assert binary_arch(folder / apple["library"]) == ("tar", "mach-o/arm64")
    # Metal: arm64 host objects carrying the Metal shader source
    metal = json.loads((folder / tvm_step["artifacts"]["apple-m1:metal"]).read_text())
    assert metal["device"] == "metal" and metal["target"]["host"]["mtriple"] == "arm64-apple-macos"
    assert binary_arch(folder / metal["library"]) == ("tar", "mach-o/arm64")
    with tarfile.open(folder / metal["library"]) as tf:
        blobs = b"".join(tf.extractfile(m).read() for m in tf.getmembers() if m.isfile())
    assert b"#include <metal_stdlib>" in blobs and b"kernel void" in blobs
    if sys.platform != "darwin":
        # Core ML cannot predict on Linux: the composite is built but its check is recorded as not run
        assert plan["validation"]["checked"] is False and "coreml" in plan["validation"]["reason"]
    # the host kernel of the same segment matches ONNX Runtime on the CumSum subgraph
    x = np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float32)
    h = models.ort_reference(folder / "segments" / "step0.onnx", {"x": x})["h"]
    ref = models.ort_reference(folder / "segments" / "step1.onnx", {"h": h})["c"]
    got = edgekit.load(folder / tvm_step["artifacts"]["host"]).run({"h": h})["c"]
    np.testing.assert_allclose(got, ref, atol=ATOL)


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction and linking Mach-O kernels need macOS")
def test_coreml_composite_runs_on_macos(coreml_cumsum_composite, tvm_models):  # pragma: no cover - macOS only
    sess = edgekit.load(coreml_cumsum_composite, board="apple-m1")
    x = np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float32)
    ref = models.ort_reference(tvm_models["cumsum"], {"x": x})["y"]
    np.testing.assert_allclose(sess.run({"x": x})["y"], ref, atol=1e-3)  # Core ML may compute in fp16


def test_tflite_composite_with_cumsum(tvm_models, tmp_path_factory):
    from edgekit.converters import get_exporter
    from edgekit.converters.composite import build_composite

    why = get_exporter("tflite").unavailable_reason()
    if why:
        pytest.skip(f"TFLite exporter unavailable here: {why}")
    plan_path = build_composite(tvm_models["cumsum"], tmp_path_factory.mktemp("c") / "tfl", "tflite")
    plan = json.loads(plan_path.read_text())
    assert [(s["kind"], s["format"]) for s in plan["steps"]] == [
        ("runtime", "tflite"), ("tvm", "tvm"), ("runtime", "tflite")]
    x = np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float32)
    ref = models.ort_reference(tvm_models["cumsum"], {"x": x})["y"]
    np.testing.assert_allclose(edgekit.load(plan_path).run({"x": x})["y"], ref, atol=1e-4)  # LiteRT fp32 kernels


def test_op_without_an_ort_kernel_runs_on_tvm(tmp_path):
    """Erf on float64: ONNX Runtime has no kernel (NOT_IMPLEMENTED), so the onnx composite puts it on TVM."""
    import math

    from onnx import TensorProto, helper

    from edgekit.converters.composite import build_composite

    n = helper.make_node
    g = helper.make_graph([n("Erf", ["x"], ["e"]), n("Add", ["e", "x"], ["y"])], "erf64",
                          [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 5])])
    path = models.save(models._model(g), tmp_path / "erf64.onnx")
    plan_path = build_composite(path, tmp_path / "c", "onnx")
    plan = json.loads(plan_path.read_text())
    assert [s["kind"] for s in plan["steps"]] == ["tvm", "runtime"]
    assert "no Erf kernel for float64" in plan["steps"][0]["reasons"]["Erf"]
    assert plan["validation"]["checked"] is False  # ORT cannot run the whole model: no reference from it
    x = np.linspace(-2, 2, 10).reshape(2, 5)
    ref = np.vectorize(math.erf)(x) + x
    np.testing.assert_allclose(edgekit.load(plan_path).run({"x": x})["y"], ref, atol=1e-12)  # float64 math.erf
