"""Exporters on the graph shapes public models have (issue 12): opset-11 sources for static int8, dynamic input
dims for TFLite / Core ML (fixed first), Shape->Gather->Concat->Reshape chains, ConvTranspose, calibration rows
of a fixed batch, typed errors instead of library text, and no temp files in the current directory.

Every comparison is against plain onnxruntime on the float source, with the tolerance stated at the assert.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgekit
from edgekit.converters import get_exporter, toolenv
from edgekit.converters.calibration import check_samples, samples
from edgekit.converters.canonical import io_specs
from edgekit.converters.quantize import needs_opset, opset_note, quantize
from edgekit.errors import ConversionError

import models

HAS_COREML = importlib.util.find_spec("coremltools") is not None
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None


def _fixed(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy whose inputs take exactly ``shapes``, intermediate shapes re-inferred (what the pipeline does)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        for d, v in zip(vi.type.tensor_type.shape.dim, shapes.get(vi.name, ())):
            d.Clear()
            d.dim_value = v
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(m, data_prop=True)


def _rand(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("real-graphs")
    built = {
        "opset11": models.conv_bn_opset11(),
        "seg": models.dynamic_hw_segmenter(),
        "seg_fixed": _fixed(models.dynamic_hw_segmenter(), {"images": (1, 3, 32, 48)}),
        "chain": models.shape_chain(),
        "chain_fixed": _fixed(models.shape_chain(), {"x": (2, 5, 16)}),
        "convt": models.conv_transpose_padded(),
        "two_symbols": models.two_symbols(),
        "resize": models.resize_nearest(),
        "split": models.split_parts(),
    }
    return {k: models.save(m, d / f"{k}.onnx") for k, m in built.items()}


# -- static int8 on an old opset ----------------------------------------------------------------------------

def test_static_int8_of_an_opset11_model_runs_and_is_close(graphs, tmp_path):
    src = graphs["opset11"]
    inputs, _ = io_specs(onnx.load(str(src)))
    out = quantize(src, tmp_path / "int8.onnx", "int8", {"image": _rand((16, 3, 16, 16), 0)}, inputs)
    q = onnx.load(str(out))
    assert any(n.op_type == "DequantizeLinear" for n in q.graph.node)
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 13
    for seed in (1, 2, 3):
        x = {"image": _rand((1, 3, 16, 16), seed)}
        ref, got = models.ort_reference(src, x)["map"], models.ort_reference(out, x)["map"]
        assert _cosine(ref, got) > 0.995                                       # 8-bit grid on a 16-channel net
        assert np.abs(ref - got).mean() < 0.02 * np.ptp(ref)                  # mean error < 2% of the range


def test_opset_requirement_is_exposed_for_the_report():
    assert needs_opset("int8") == 13 and needs_opset("fp16") == 0 and needs_opset("int8-dynamic") == 0
    assert "11 to 13" in opset_note(11, "int8")
    assert opset_note(13, "int8") is None and opset_note(11, "fp16") is None


# -- temp files of quantization stay out of the current directory ------------------------------------------

@pytest.mark.parametrize("precision", ["int8", "int8-dynamic", "fp16"])
def test_quantization_leaves_the_current_directory_empty(graphs, tmp_path, monkeypatch, precision):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    src = graphs["two_symbols"]
    inputs, _ = io_specs(onnx.load(str(src)))
    cal = {"a": _rand((8, 1, 64), 0), "b": _rand((8, 1, 64), 1)}
    out = quantize(src, tmp_path / f"{precision}.onnx", precision, cal, inputs)
    assert sorted(p.name for p in cwd.iterdir()) == []
    x = {"a": _rand((3, 64), 5), "b": _rand((1, 64), 6)}
    ref, got = models.ort_reference(src, x)["y"], models.ort_reference(out, x)["y"]
    assert _cosine(ref, got) > 0.99                                            # a working quantized model


# -- calibration rows of a model with a fixed batch --------------------------------------------------------

def test_calibration_rows_are_split_into_the_models_batch(tmp_path):
    src = models.save(models.two_in_two_out(), tmp_path / "b2.onnx")       # inputs x[2,16], bias[2,10]
    inputs, _ = io_specs(onnx.load(str(src)))
    rows = {"x": _rand((12, 16), 0), "bias": _rand((12, 10), 1)}
    checked = check_samples(rows, inputs, "test")
    feeds = samples(checked, inputs)
    assert len(feeds) == 6 and all(f["x"].shape == (2, 16) and f["bias"].shape == (2, 10) for f in feeds)
    np.testing.assert_array_equal(feeds[1]["x"], rows["x"][2:4])
    assert [f["x"].shape for f in samples(rows, inputs)] == [(2, 16)] * 6   # unchecked rows too
    out = quantize(src, tmp_path / "int8.onnx", "int8", checked, inputs)
    ref, got = models.ort_reference(src, feeds[0]), models.ort_reference(out, feeds[0])
    assert _cosine(ref["y"], got["y"]) > 0.99


# -- Core ML -------------------------------------------------------------------------------------------------

needs_coreml = pytest.mark.skipif(not HAS_COREML, reason="coremltools (edgekit-sdk[coreml]) is not installed")


@needs_coreml
@pytest.mark.parametrize("name, shape_of", [("seg", "images"), ("chain", "x")])
def test_coreml_dynamic_dims_are_a_clear_error(graphs, tmp_path, name, shape_of):
    with pytest.raises(ConversionError, match=rf"input '{shape_of}' has dynamic dims .*--input-shape {shape_of}="):
        get_exporter("coreml").export(graphs[name], tmp_path / "d.mlpackage", "fp32")


@needs_coreml
@pytest.mark.parametrize("name, feed, precision, tol", [
    ("seg_fixed", {"images": _rand((1, 3, 32, 48), 7)}, "fp32", 1e-5),
    ("convt", {"x": _rand((1, 4, 7, 9), 8)}, "fp32", 1e-5),
    ("convt", {"x": _rand((1, 4, 7, 9), 8)}, "fp16", 1e-2),
    ("chain_fixed", {"x": _rand((2, 5, 16), 9)}, "fp32", 1e-5),
    ("resize", {"x": _rand((1, 4, 5, 6), 15)}, "fp32", 1e-5),
    ("split", {"x": _rand((1, 6, 4), 16)}, "fp32", 1e-6),
])
def test_coreml_convtranspose_and_shape_chains_match_onnxruntime(graphs, tmp_path, name, feed, precision, tol):
    ex = get_exporter("coreml")
    assert ex.static_shapes is True and get_exporter("onnx").static_shapes is False
    pkg = ex.export(graphs[name], tmp_path / f"{name}.mlpackage", precision)
    ref, got = models.ort_reference(graphs[name], feed), ex.evaluate(pkg, feed)
    for k in ref:
        assert np.abs(ref[k] - got[k]).max() < tol                             # fp32 1e-5, fp16 1e-2 abs


@needs_coreml
def test_coreml_pinned_shapes_fold_a_dynamic_shape_chain(graphs, tmp_path):
    ex = get_exporter("coreml")
    pkg = ex.export(graphs["chain"], tmp_path / "pinned.mlpackage", "fp32", input_shapes={"x": [3, 4, 16]})
    x = {"x": _rand((3, 4, 16), 10)}
    assert np.abs(models.ort_reference(graphs["chain"], x)["y"] - ex.evaluate(pkg, x)["y"]).max() < 1e-5


@needs_coreml
def test_coreml_int8_calibrates_on_rows_of_a_fixed_batch(graphs, tmp_path):
    """Row-form calibration [N*2, 5, 16] for a batch-2 source: was ORT's raw 'Got invalid dimensions'."""
    ex = get_exporter("coreml")
    pkg = ex.export(graphs["chain_fixed"], tmp_path / "i8.mlpackage", "int8", calibration={"x": _rand((8, 5, 16), 11)})
    x = {"x": _rand((2, 5, 16), 12)}
    ref, got = models.ort_reference(graphs["chain_fixed"], x)["y"], ex.evaluate(pkg, x)["y"]
    assert _cosine(ref, got) > 0.999                                           # weight-only int8


# -- TFLite --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx2tf_env() -> Path:
    if not HAS_LITERT:
        pytest.skip("LiteRT (edgekit-sdk[tflite]) is not installed")
    reason = toolenv.unavailable_reason(toolenv.ONNX2TF)
    if reason:
        pytest.skip(reason)
    try:
        return toolenv.ensure(toolenv.ONNX2TF)
    except toolenv.ToolEnvError as exc:
        pytest.skip(f"onnx2tf tool environment cannot be built here: {exc}")


@pytest.mark.parametrize("name, shape_of", [("seg", "images"), ("chain", "x")])
def test_tflite_dynamic_dims_are_a_clear_error(graphs, tmp_path, name, shape_of):
    """Before: the dynamic shape chain converted and ran with wrong numbers (max error ~1.0)."""
    with pytest.raises(ConversionError, match=rf"input '{shape_of}' has dynamic dims .*--input-shape {shape_of}="):
        get_exporter("tflite").export(graphs[name], tmp_path / "d.tflite", "fp32")
    assert not (tmp_path / "d.tflite").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name, feed", [("seg_fixed", {"images": _rand((1, 3, 32, 48), 13)}),
                                        ("chain_fixed", {"x": _rand((2, 5, 16), 14)})])
def test_tflite_fixed_shapes_convert_and_match_onnxruntime(onnx2tf_env, graphs, tmp_path, name, feed):
    ex = get_exporter("tflite")
    assert ex.static_shapes is True
    out = ex.export(graphs[name], tmp_path / f"{name}.tflite", "fp32")
    ref = models.ort_reference(graphs[name], feed)
    got = edgekit.load(str(out)).run(feed)
    for (k, r), g in zip(ref.items(), got.values()):                           # bound by position (TFLite names)
        assert g.shape == r.shape and np.abs(r - g).max() < 1e-4, k             # fp32: 1e-4 abs


@pytest.mark.parametrize("opset, step", [(11, r"static int8: opset upgrade 11 -> 13 \(onnx version converter\)"),
                                         (13, r"static int8 quantization \(onnxruntime quantize_static\)")])
def test_library_errors_become_conversion_errors_naming_the_step(tmp_path, opset, step):
    """A graph a library refuses is reported as the step that failed, the library's text only as detail."""
    m = models.conv_bn_opset11()
    m.opset_import[0].version = opset
    m.graph.node[0].input[1] = "missing_weight"          # an input no node or initializer produces
    src = tmp_path / "bad.onnx"
    onnx.save(m, str(src))
    with pytest.raises(ConversionError, match=rf"^{step} failed: .*missing_weight") as err:
        quantize(src, tmp_path / "int8.onnx", "int8", {"image": _rand((4, 3, 16, 16), 0)}, io_specs(m)[0])
    assert "[ONNXRuntimeError]" not in str(err.value)
