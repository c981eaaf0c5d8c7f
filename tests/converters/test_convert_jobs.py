"""A conversion is a plan of independent variant jobs: a failed variant is recorded, the others are written.

Also the shapes static-shape formats are built for (``--input-shape`` or the validation data), and that a
conversion writes nothing outside its work folder and its output.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import edgekit
from edgekit.cli import main
from edgekit.commands.convert import PARTIAL_EXIT
from edgekit.converters import get_exporter
from edgekit.errors import ConversionError, InputError

import models


def _usable(fmt: str) -> None:
    why = get_exporter(fmt).unavailable_reason()
    if why:
        pytest.skip(f"{fmt} exporter not usable here: {why}")


@pytest.fixture(scope="module")
def celu_onnx(model_dir):
    """Celu: ONNX Runtime runs it; neither the Core ML translator nor TVM's ONNX frontend has it."""
    return models.save(models.celu_model(), model_dir / "celu.onnx")


def test_a_failed_variant_is_recorded_and_the_rest_written(tmp_path, celu_onnx, capsys):
    _usable("coreml")
    out = tmp_path / "b"
    rc = main(["convert", str(celu_onnx), "-o", str(out), "--to", "onnx,coreml", "--quantize", "fp32,int8-dynamic"])
    err = capsys.readouterr().err
    assert rc == PARTIAL_EXIT
    bundle = edgekit.Bundle(out)
    assert [v.id for v in bundle.variants] == ["onnx-fp32", "onnx-int8-dynamic"]
    assert all(v.passed for v in bundle.variants)
    failed = {f["variant"]: f for f in bundle.failed}
    assert set(failed) == {"coreml-fp32", "coreml-int8-dynamic"}
    for f in failed.values():
        assert f["stage"] == "fallback" and "Celu" in f["message"] and not f.get("unexpected")
    # one stderr line per failed variant, naming it; no traceback
    lines = [x for x in err.splitlines() if x.startswith("edgekit:")]
    assert len(lines) == 2 and all("coreml-" in x and "failed at fallback" in x for x in lines), err
    assert "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["variant"] for f in manifest["failed"]] == ["coreml-fp32", "coreml-int8-dynamic"]
    report = (out / "report.md").read_text()
    assert "## Failed" in report and "coreml-int8-dynamic" in report
    # the built variants really run and match the source
    x = np.linspace(-2, 2, 10, dtype=np.float32).reshape(2, 5)
    want = models.ort_reference(celu_onnx, {"x": x})["y"]
    np.testing.assert_allclose(bundle.load("onnx-fp32").run({"x": x})["y"], want, rtol=1e-6, atol=1e-6)


def test_no_variant_built_is_an_error_and_leaves_no_bundle(tmp_path, celu_onnx, capsys):
    _usable("coreml")
    out = tmp_path / "b"
    with pytest.raises(ConversionError, match="no variant could be built.*coreml-fp32"):
        edgekit.convert(celu_onnx, out, targets="coreml", quantize="fp32", progress=False)
    assert not out.exists()
    assert main(["convert", str(celu_onnx), "-o", str(out), "--to", "coreml", "--quantize", "fp32"]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("edgekit:")]
    assert not out.exists() and len(err) == 1 and "coreml-fp32" in err[0]


def test_all_validated_exits_0(tmp_path, mlp_onnx):
    assert main(["convert", str(mlp_onnx), "-o", str(tmp_path / "b"), "--to", "onnx", "--quantize", "fp32,fp16"]) == 0
    assert edgekit.Bundle(tmp_path / "b").failed == []


@pytest.fixture(scope="module")
def dyn_onnx(model_dir):
    return models.save(models.dynamic_hw_segmenter(), model_dir / "dyn_hw.onnx")


def _images(n: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, h, w)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["tflite", "coreml"])
def test_dynamic_hw_is_fixed_from_the_validation_data(tmp_path, dyn_onnx, fmt):
    """A [N,3,H,W] source: the static-shape format is built at the data's shape; ONNX keeps its dynamic dims."""
    _usable(fmt)
    b = edgekit.convert(dyn_onnx, tmp_path / "b", targets=["onnx", fmt], quantize="fp32",
                        validation={"images": _images(4, 40, 56, 1)}, progress=False)
    assert b.failed == []
    onnx_v, static_v = b.variant("onnx-fp32"), b.variant(f"{fmt}-fp32")
    assert list(onnx_v.inputs[0].shape) == ["N", 3, "H", "W"]
    assert list(static_v.inputs[0].shape) == [1, 3, 40, 56] and list(static_v.outputs[0].shape) == [1, 1, 40, 56]
    assert static_v.passed, static_v.validation
    assert b.manifest["static_shapes"] == {"images": [1, 3, 40, 56]}
    assert b.manifest["validated_shapes"] == {"images": [1, 3, 40, 56]}
    assert "1,3,40,56" in (b.path / "report.md").read_text()
    if fmt == "tflite":      # LiteRT runs it here: the mask matches ONNX Runtime on a new image
        x = _images(1, 40, 56, 7)
        want = models.ort_reference(dyn_onnx, {"images": x})["mask"]
        got = b.load(static_v.id).run({"images": x})["mask"]
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_input_shape_flag(tmp_path, dyn_onnx, capsys):
    _usable("tflite")
    val = tmp_path / "val.npz"
    np.savez(val, images=_images(3, 24, 32, 2))
    out = tmp_path / "b"
    rc = main(["convert", str(dyn_onnx), "-o", str(out), "--to", "tflite", "--quantize", "fp32",
               "--validation", str(val), "--input-shape", "images=1,3,24,32"])
    assert rc == 0, capsys.readouterr().err
    assert list(edgekit.Bundle(out).variant("tflite-fp32").inputs[0].shape) == [1, 3, 24, 32]


@pytest.mark.parametrize("shape, needle", [
    ("images=1,3,24", "4"),                  # rank
    ("pixels=1,3,24,32", "no input 'pixels'"),
    ("images=1,3,x,32", "integers"),
    ("images=1,3,48,32", "validation"),      # disagrees with the data it is validated on
])
def test_bad_input_shape_is_one_line_exit_2(tmp_path, dyn_onnx, capsys, shape, needle):
    val = tmp_path / "val.npz"
    np.savez(val, images=_images(3, 24, 32, 2))
    rc = main(["convert", str(dyn_onnx), "-o", str(tmp_path / "b"), "--to", "onnx", "--quantize", "fp32",
               "--validation", str(val), "--input-shape", shape])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("budget", ["-1", "nan", "inf"])
def test_bad_retry_budget_is_one_line_exit_2(tmp_path, mlp_onnx, capsys, budget):
    rc = main(["convert", str(mlp_onnx), "-o", str(tmp_path / "b"), "--to", "onnx", "--quantize", "fp32",
               "--retry-budget-s", budget])
    err = capsys.readouterr().err
    assert rc == 2 and "retry_budget_s" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()


def test_static_copy_keeps_a_3d_linear_layer_a_matmul(tmp_path):
    """Fixing the input shapes folds shape chains, but does not fuse a 3-D MatMul+Add into Reshape-Gemm-Reshape:
    onnx2tf converted that form of PP-OCRv4's recognizer wrong (TFLite cosine 0.83; 1.0000 unfused). The copy still
    computes what the source does."""
    from edgekit.converters.canonical import canonicalize
    from edgekit.converters.shapes import fix_input_shapes

    src = canonicalize(models.conv_then_token_linear())
    fixed = fix_input_shapes(src, {"image": (1, 3, 4, 16)})
    ops = [n.op_type for n in fixed.graph.node]
    assert "Gemm" not in ops and "MatMul" in ops, ops
    x = {"image": np.random.default_rng(0).standard_normal((1, 3, 4, 16)).astype(np.float32)}
    want = models.ort_reference(models.save(src, tmp_path / "src.onnx"), x)["y"]
    got = models.ort_reference(models.save(fixed, tmp_path / "fixed.onnx"), x)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)      # fp32, same ops


def test_input_shapes_in_the_api_are_checked(tmp_path, dyn_onnx):
    with pytest.raises(InputError, match="positive"):
        edgekit.convert(dyn_onnx, tmp_path / "b", targets="onnx", input_shapes={"images": (1, 3, 0, 8)})


def test_conversion_leaves_the_current_folder_empty(tmp_path, bert_onnx, monkeypatch):
    """Every tool (ORT's quantizer and shape inference above all) writes into the work folder, never the cwd."""
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    ids = np.random.default_rng(0).integers(0, 100, (10, 1, 8)).astype(np.int64)
    b = edgekit.convert(bert_onnx, tmp_path / "b", targets="onnx", quantize="fp32,int8-dynamic,int8",
                        calibration={"input_ids": ids}, progress=False)
    assert len(b.variants) == 3
    assert list(here.iterdir()) == []


def test_the_converters_output_goes_to_the_bundle_log(tmp_path, mlp_onnx, capfd):
    edgekit.convert(mlp_onnx, tmp_path / "b", targets="onnx", quantize="fp32,int8-dynamic", progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert (tmp_path / "b" / "convert.log").is_file()


def test_int8_composite_calibrates_segments_that_start_inside_the_graph(tmp_path, model_dir):
    """MatMul (Core ML) -> CumSum (TVM) -> Relu, MatMul (Core ML): the last segment's input gets calibration data
    computed from the model's own (KeyError on that tensor when the model's data was passed to every segment)."""
    _usable("coreml")
    src = models.save(models.cumsum_model(), model_dir / "cumsum.onnx")
    cal = {"x": np.random.default_rng(0).standard_normal((8, 1, 4, 8)).astype(np.float32)}
    b = edgekit.convert(src, tmp_path / "b", targets="coreml", quantize="int8", calibration=cal, progress=False)
    assert b.failed == []
    v = b.variant("coreml-int8+tvm")
    assert v.format == "composite" and v.passed, v.validation


def test_int8_retry_falls_back_to_weighted_ops_only(tmp_path, model_dir):
    """A decomposed LayerNorm over tokens of very different scales: static int8 of its elementwise chain gives
    cosine ~0.28 and keeping weighted nodes float (the ranked retry) cannot help; int8 in the weighted ops alone,
    tried when that retry fails, passes."""
    src = models.save(models.scaled_layernorm(), model_dir / "scaled_ln.onnx")
    x = np.random.default_rng(1).standard_normal((40, 1, 16, 32)).astype(np.float32)
    b = edgekit.convert(src, tmp_path / "b", targets="onnx", quantize="int8", calibration={"x": x[:30]},
                        validation={"x": x[30:]}, progress=False)
    v = b.variant("onnx-int8")
    assert v.passed and v.validation["kept_reason"] == "weighted ops only"
    assert {"sub", "div"} <= set(v.validation["kept_float"]) and not {"mm1", "mm2"} & set(v.validation["kept_float"])
    xs = x[30:35, 0]
    want = np.stack([models.ort_reference(src, {"x": xi[None]})["out"] for xi in xs])
    got = np.stack([b.load("onnx-int8").run({"x": xi[None]})["out"] for xi in xs])
    cos = (want * got).sum() / np.linalg.norm(want) / np.linalg.norm(got)
    assert cos > 0.99                       # int8 weighted ops still cost a little accuracy, never this much


def test_int8_that_no_retry_rescues_falls_back_to_dynamic_int8(tmp_path, model_dir):
    """Calibration data 8x smaller than the inputs: static int8 clips every layer (keeping some layers float or only
    the weighted ops in int8 cannot help); dynamic int8 measures each call's range and passes. The variant is kept,
    recorded as int8-dynamic, with the static figure that missed, and the report says so."""
    src = models.save(models.deep_relu_mlp(), model_dir / "deep_mlp.onnx")
    rng = np.random.default_rng(0)
    cal = rng.standard_normal((24, 1, 32)).astype(np.float32)
    val = (8 * rng.standard_normal((12, 1, 32))).astype(np.float32)
    b = edgekit.convert(src, tmp_path / "b", targets="onnx", quantize="int8", calibration={"x": cal},
                        validation={"x": val}, progress=False, retry_budget_s=60)
    v = b.variant("onnx-int8")
    assert v.passed and v.precision == "int8-dynamic" and "static_int8" in v.validation, v.validation
    ops = {n.op_type for n in onnx.load(str(b.artifact(v))).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops            # int8 compute, not a float copy
    want = np.stack([models.ort_reference(src, {"x": x})["y"] for x in val])
    got = np.stack([b.load("onnx-int8").run({"x": x})["y"] for x in val])
    cos = (want * got).sum() / np.linalg.norm(want) / np.linalg.norm(got)
    assert cos > 0.99                                                    # tolerance: 8-bit on 32-wide layers
    assert "dynamic int8" in (b.path / "report.md").read_text()


def test_int8_tflite_of_a_ceil_mode_max_pool_validates(tmp_path, model_dir):
    """onnx2tf pads a ceil-mode MaxPool with -3.4e38, so static int8 calibrated that tensor's range to ~[-3.4e38,
    max] (MTCNN O-Net: scale 1.3e36, a constant output, a graph XNNPACK refused): the copy given to onnx2tf pads by
    edge replication instead, and the static int8 variant validates."""
    _usable("tflite")
    src = models.save(models.ceil_pool_fc(), model_dir / "ceil_pool_fc.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((36, 1, 3, 24, 24)).astype(np.float32)
    b = edgekit.convert(src, tmp_path / "b", targets="tflite", quantize="int8", calibration={"image": x[:24]},
                        validation={"image": x[24:]}, progress=False)
    assert b.failed == [], b.failed
    v = b.variant("tflite-int8")
    assert v.passed and v.precision == "int8", v.validation       # static int8 itself, no fallback needed
    sess = b.load("tflite-int8")
    want = np.stack([models.ort_reference(src, {"image": xi})["logits"] for xi in x[24:]])
    got = np.stack([sess.run({"image": xi})["logits"] for xi in x[24:]])
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()  # tolerance: 8-bit activations and weights


def test_a_tflite_model_xnnpack_refuses_runs_on_builtin_kernels(tmp_path, model_dir, monkeypatch):
    """The same model exported without the max-pool rewrite is refused whole by LiteRT's default XNNPACK delegate
    ("failed to prepare"): edgekit.load opens it on LiteRT's builtin kernels, which give what LiteRT itself gives
    without delegates."""
    _usable("tflite")
    from edgekit.converters import export_tflite
    from edgekit.runtimes.litert import interpreter_class

    monkeypatch.setattr(export_tflite, "edge_padded_max_pools", lambda model: 0)
    monkeypatch.setattr(export_tflite, "verify_tflite", lambda *a, **k: None)
    src = models.save(models.ceil_pool_fc(), model_dir / "ceil_pool_fc.onnx")
    x = np.random.default_rng(1).standard_normal((16, 1, 3, 24, 24)).astype(np.float32)
    path = get_exporter("tflite").export(src, tmp_path / "refused.tflite", "int8", calibration={"image": x})
    Interpreter = interpreter_class()
    with pytest.raises(RuntimeError, match="XNNPACK|failed to prepare"):
        Interpreter(model_path=str(path)).allocate_tensors()
    sess = edgekit.load(path)
    plain = Interpreter(model_path=str(path), experimental_op_resolver_type=__import__(
        Interpreter.__module__, fromlist=["OpResolverType"]).OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    plain.allocate_tensors()
    i, o = plain.get_input_details()[0], plain.get_output_details()[0]
    plain.set_tensor(i["index"], x[0])
    plain.invoke()
    got = next(iter(sess.run({sess.inputs[0].name: x[0]}).values()))
    np.testing.assert_array_equal(got, plain.get_tensor(o["index"]))   # the same kernels: bit for bit


def test_opset11_source_gets_static_int8_on_an_upgraded_copy(tmp_path, model_dir):
    """Paddle2ONNX exports are often opset 11: per-channel QDQ needs 13, so int8 is built on an upgraded copy,
    validated, and the report says so (it was an invalid model that ORT refused: 'Unrecognized attribute: axis')."""
    src = models.save(models.conv_bn_opset11(), model_dir / "conv_bn11.onnx")
    cal = {"image": np.random.default_rng(0).standard_normal((12, 1, 3, 16, 16)).astype(np.float32)}
    b = edgekit.convert(src, tmp_path / "b", targets="onnx", quantize="fp32,int8", calibration=cal, progress=False)
    assert b.failed == [] and b.variant("onnx-int8").passed
    assert "upgraded from opset 11 to 13" in (b.path / "report.md").read_text()


def test_a_pruning_the_retry_undid_entirely_is_flagged(tmp_path, mlp_onnx):
    """At a cosine no pruning reaches, the retry leaves every prunable layer dense: the variant is the unpruned
    model and the manifest and report say so (it passed as 'sparse90' with no sparsity before)."""
    b = edgekit.convert(mlp_onnx, tmp_path / "b", targets="onnx", quantize="fp32", prune=0.9,
                        cosine_threshold=0.9999999, progress=False)
    v = b.variant("onnx-fp32-sparse90")
    assert v.validation.get("pruned_nothing") is True
    assert "variants are the unpruned model" in (b.path / "report.md").read_text()
