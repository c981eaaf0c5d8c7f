"""Core ML exporter: ONNX -> MIL -> .mlpackage at each precision, checked against onnxruntime.

Core ML ``predict`` needs macOS; on Linux each package is reloaded through the milproto loader and its MIL
program is evaluated op by op (edgekit.converters.mil_eval, a graph check, not a device run).
"""

from __future__ import annotations

import json
import platform

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models

pytest.importorskip("coremltools")

from edgekit.converters import get_exporter, mil_eval, onnx_to_mil  # noqa: E402
from edgekit.errors import InputError, ModelLoadError, OutputExistsError, UnsupportedOpError  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")
MODELS = ("cnn", "mlp", "bert_block")


def _feeds(name: str, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "cnn":
        return {"image": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    if name == "mlp":  # dynamic batch: the package keeps a flexible first dim
        return {"x": rng.standard_normal((3, 16)).astype(np.float32)}
    return {"input_ids": rng.integers(0, 100, (1, 8)).astype(np.int64)}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _close(ref: np.ndarray, got: np.ndarray, precision: str) -> None:
    assert got.shape == ref.shape
    scale = float(np.abs(ref).max())
    if precision == "fp32":
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale)        # fp32: ~1e-5
    elif precision == "fp16":
        np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2 * scale)        # fp16: ~1e-2 relative
    else:
        assert _cos(ref, got) >= 0.99                                               # int8 weights: cosine
        assert float(np.abs(got - ref).max()) <= 0.1 * scale


@pytest.fixture(scope="module")
def exporter():
    return get_exporter("coreml")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("coreml_src")
    return {m: models.save(getattr(models, m)(), d / f"{m}.onnx") for m in MODELS}


@pytest.fixture(scope="module")
def packages(exporter, sources, tmp_path_factory):
    """Every (model, precision) exported once for the module."""
    d = tmp_path_factory.mktemp("coreml_pkgs")
    return {(m, p): exporter.export(sources[m], d / f"{m}-{p}.mlpackage", p) for m in MODELS for p in PRECISIONS}


def _op_types(spec) -> set[str]:
    return {op.type for f in spec.mlProgram.functions.values() for b in f.block_specializations.values()
            for op in b.operations}


def test_registered(exporter):
    assert exporter.format == "coreml" and exporter.suffix == ".mlpackage" and exporter.extra == "coreml"
    assert exporter.unavailable_reason() is None


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", MODELS)
def test_export_reload_and_graph_check(packages, sources, exporter, model, precision):
    pkg = packages[(model, precision)]
    assert pkg.is_dir() and (pkg / "Manifest.json").is_file()
    prog, spec = mil_eval.load_program(pkg)          # milproto reload re-runs type inference
    assert "main" in prog.functions
    onnx_model = onnx.load(str(sources[model]))
    assert [i.name for i in spec.description.input] == [i.name for i in onnx_model.graph.input]
    assert [o.name for o in spec.description.output] == [o.name for o in onnx_model.graph.output]
    ops = _op_types(spec)
    expected = {"cnn": {"conv", "relu", "reduce_mean", "linear", "softmax"}, "mlp": {"linear", "relu"},
                "bert_block": {"gather", "matmul", "softmax", "layer_norm"}}[model]
    assert expected <= ops, ops
    if precision == "int8":
        assert "constexpr_affine_dequantize" in ops      # weights really stored as int8
    if precision == "fp16":
        assert "cast" in ops                             # fp32 I/O around an fp16 program
    meta = mil_eval.io_metadata(spec)
    assert meta["precision"] == precision
    if model == "bert_block":
        assert spec.description.input[0].type.multiArrayType.dataType == 131104    # int32
        assert meta["narrowed_inputs"] == {"input_ids": "int64->int32"}
    feeds = _feeds(model)
    ref = models.ort_reference(sources[model], feeds)
    got = exporter.evaluate(pkg, feeds)
    assert set(got) == set(ref)
    for k in ref:
        _close(ref[k], got[k], precision)


def test_int8_is_smaller(packages):
    from edgekit._fs import size_of

    fp32, fp16, int8 = (size_of(packages[("bert_block", p)]) for p in PRECISIONS)
    assert int8 < fp16 < fp32


def test_dynamic_batch_and_inspect(packages, capsys):
    from edgekit.cli import main

    assert main(["inspect", "--json", str(packages[("mlp", "fp32")])]) == 0
    info = json.loads(capsys.readouterr().out)
    text = json.dumps(info)
    assert '"x"' in text and '"logits"' in text and "linear" in text
    runner_specs = info.get("inputs") or info.get("info", {}).get("inputs")
    assert runner_specs[0]["shape"] == [None, 16]


# --- the translation table, op by op ----------------------------------------------------------------

def _ops_model(opset: int = 17) -> onnx.ModelProto:
    """A graph using the ops tests/models.py does not: grouped/strided Conv with asymmetric pads, pooling,
    BatchNorm, Clip, HardSwish, Concat, Reshape(0,-1), (Un)Squeeze, ReduceMean, Pow, Sqrt, Slice, Pad, ..."""
    rng = np.random.default_rng(3)
    w = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    inits = {"cw": w(6, 3, 3, 3), "cb": w(6), "dw": w(6, 1, 3, 3), "bn_s": np.abs(w(6)) + 0.5, "bn_b": w(6),
             "bn_m": w(6), "bn_v": np.abs(w(6)) + 0.5, "zero": np.array(0.0, np.float32),
             "six": np.array(6.0, np.float32), "shape": np.array([0, 6, -1], np.int64),
             "ax": np.array([1], np.int64), "two": np.array(2.0, np.float32), "eps": np.array(1e-3, np.float32),
             "st": np.array([1], np.int64), "en": np.array([5], np.int64), "sax": np.array([3], np.int64),
             "pads": np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64), "fw": w(8, 5)}
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "cw", "cb"], ["c1"], pads=[0, 2, 1, 1], strides=[2, 1], name="conv_asym"),
        n("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-3),
        n("Clip", ["bn", "zero", "six"], ["r6"]),
        n("Conv", ["r6", "dw"], ["dwc"], pads=[1, 1, 1, 1], group=6, name="depthwise"),
        n("HardSwish", ["dwc"], ["hs"]),
        n("MaxPool", ["hs"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        n("AveragePool", ["hs"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Sigmoid", ["ap"], ["sg"]),
        n("Concat", ["mp", "sg"], ["cat"], axis=1),
        n("Pad", ["cat", "pads"], ["pd"], mode="constant"),
        n("Slice", ["pd", "st", "en", "sax"], ["sl"]),
        n("ReduceMean", ["sl"], ["rm"], axes=[2], keepdims=0),
        n("Constant", [], ["k"], value=numpy_helper.from_array(np.array(0.5, np.float32))),
        n("Pow", ["rm", "two"], ["sq"]), n("Add", ["sq", "eps"], ["sq1"]), n("Sqrt", ["sq1"], ["rt"]),
        n("Sub", ["rt", "k"], ["d0"]), n("Tanh", ["d0"], ["th"]),
        n("Transpose", ["th"], ["tr"], perm=[0, 2, 1]),
        n("Reshape", ["tr", "shape"], ["rs"]),
        n("Unsqueeze", ["rs", "ax"], ["us"]), n("Squeeze", ["us", "ax"], ["sq2"]),
        n("Identity", ["sq2"], ["id"]), n("Cast", ["id"], ["cs"], to=TensorProto.FLOAT),
        n("MatMul", ["cs", "fw"], ["mm"]), n("Mean", ["mm", "mm"], ["y"]),
    ]
    g = helper.make_graph(nodes, "ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["d0", "d1", "d2"])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return onnx.shape_inference.infer_shapes(m)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_op_table_matches_onnxruntime(exporter, tmp_path, precision):
    src = models.save(_ops_model(), tmp_path / "ops.onnx")
    pkg = exporter.export(src, tmp_path / "ops.mlpackage", precision)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 9, 10)).astype(np.float32)}
    ref = models.ort_reference(src, feeds)["y"]
    _close(ref, exporter.evaluate(pkg, feeds)["y"], precision)


def test_gelu_opset20(exporter, tmp_path):
    nodes = [helper.make_node("Gelu", ["x"], ["a"]), helper.make_node("Gelu", ["x"], ["b"], approximate="tanh"),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 9
    src = models.save(m, tmp_path / "gelu.onnx")
    pkg = exporter.export(src, tmp_path / "gelu.mlpackage", "fp32")
    feeds = {"x": np.linspace(-3, 3, 10, dtype=np.float32).reshape(2, 5)}
    _close(models.ort_reference(src, feeds)["y"], exporter.evaluate(pkg, feeds)["y"], "fp32")


# --- errors -----------------------------------------------------------------------------------------

def test_unsupported_op_names_node(exporter, tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("NonZero", ["r"], ["y"], name="find_them")]
    g = helper.make_graph(nodes, "u", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, [1, None])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = models.save(m, tmp_path / "u.onnx")
    assert onnx_to_mil.supports(m.graph.node[0]) and not onnx_to_mil.supports(m.graph.node[1])
    with pytest.raises(UnsupportedOpError, match="find_them.*NonZero"):
        exporter.export(src, tmp_path / "u.mlpackage", "fp32")
    assert not (tmp_path / "u.mlpackage").exists()


def test_bad_arguments_and_existing_output(exporter, sources, packages, tmp_path):
    with pytest.raises(InputError, match="precision"):
        exporter.export(sources["mlp"], tmp_path / "a.mlpackage", "int3")
    with pytest.raises(InputError, match=".mlpackage"):
        exporter.export(sources["mlp"], tmp_path / "a.mlmodel", "fp32")
    with pytest.raises(InputError, match="input_shapes"):
        exporter.export(sources["mlp"], tmp_path / "a.mlpackage", "fp32", input_shapes={"nope": [1, 16]})
    with pytest.raises(OutputExistsError):
        exporter.export(sources["mlp"], packages[("mlp", "fp32")], "fp32")
    with pytest.raises(InputError, match="missing input"):
        exporter.evaluate(packages[("mlp", "fp32")], {})


def test_pinned_input_shape(exporter, sources, tmp_path):
    pkg = exporter.export(sources["mlp"], tmp_path / "fixed.mlpackage", "fp32", input_shapes={"x": [4, 16]})
    _, spec = mil_eval.load_program(pkg)
    assert list(spec.description.input[0].type.multiArrayType.shape) == [4, 16]
    assert spec.description.input[0].type.multiArrayType.WhichOneof("ShapeFlexibility") is None


def test_corrupt_package_is_a_load_error(exporter, sources, tmp_path):
    pkg = exporter.export(sources["cnn"], tmp_path / "bad.mlpackage", "fp32")
    weights = next((pkg / "Data" / "com.apple.CoreML" / "weights").glob("*.bin"))
    weights.write_bytes(weights.read_bytes()[:64])           # truncated weight file
    with pytest.raises(ModelLoadError, match="bad.mlpackage"):
        exporter.evaluate(pkg, _feeds("cnn"))


def test_palettization(exporter, sources, tmp_path):
    pytest.importorskip("sklearn")
    pkg = exporter.export(sources["bert_block"], tmp_path / "pal.mlpackage", "fp16", palettize=6)
    _, spec = mil_eval.load_program(pkg)
    assert "constexpr_lut_to_dense" in _op_types(spec)
    feeds = _feeds("bert_block")
    ref = models.ort_reference(sources["bert_block"], feeds)["hidden"]
    assert _cos(ref, exporter.evaluate(pkg, feeds)["hidden"]) >= 0.99        # 6-bit LUT: cosine >= 0.99


def test_export_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from edgekit.converters.export_coreml import export_torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    x = torch.randn(1, 3, 12, 12)
    pkg = export_torch(net, (x,), tmp_path / "torch.mlpackage", "fp32", input_names=["image"])
    with torch.no_grad():
        ref = net(x).numpy()
    got = get_exporter("coreml").evaluate(pkg, {"image": x.numpy()})
    _close(ref, next(iter(got.values())), "fp32")


@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML predict needs macOS (coremltools has no "
                    "Core ML runtime on Linux); the graph-check tests above cover this host")
def test_predict_on_macos(packages, sources):
    from edgekit.converters.export_coreml import predict

    for model in MODELS:
        feeds = _feeds(model)
        ref = models.ort_reference(sources[model], feeds)
        got = predict(packages[(model, "fp16")], feeds)
        for k in ref:
            _close(ref[k], got[k], "fp16")


def test_attention_mask_ops(exporter, tmp_path):
    """The mask logic of exported HF BERT graphs: Gather on bool, And, Equal, Expand, Where, IsNaN."""
    n = helper.make_node
    inits = [numpy_helper.from_array(np.array([1, 4], np.int64), "shape"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([1, 0], np.int64), "idx"),
             numpy_helper.from_array(np.array(-1e4, np.float32), "neg")]
    nodes = [n("Cast", ["mask"], ["mb"], to=TensorProto.BOOL), n("Equal", ["ids", "zero"], ["pad"]),
             n("Not", ["pad"], ["notpad"]), n("And", ["mb", "notpad"], ["keep"]),
             n("Gather", ["keep", "idx"], ["keep2"], axis=0), n("Expand", ["keep2", "shape"], ["kx"]),
             n("Where", ["kx", "x", "neg"], ["masked"]), n("Softmax", ["masked"], ["p"], axis=-1),
             n("IsNaN", ["p"], ["nan"]), n("Where", ["nan", "neg", "p"], ["y"])]
    g = helper.make_graph(nodes, "mask",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 4]),
                           helper.make_tensor_value_info("mask", TensorProto.INT64, [2, 4]),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    src = models.save(m, tmp_path / "mask.onnx")
    pkg = exporter.export(src, tmp_path / "mask.mlpackage", "fp32")
    rng = np.random.default_rng(0)
    feeds = {"ids": np.array([[5, 0, 7, 0], [3, 3, 0, 9]], np.int64), "mask": np.array([[1, 1, 1, 0], [1, 0, 1, 1]]),
             "x": rng.standard_normal((2, 4)).astype(np.float32)}
    _close(models.ort_reference(src, feeds)["y"], exporter.evaluate(pkg, feeds)["y"], "fp32")


def test_keep_float_skips_named_nodes(exporter, sources, tmp_path):
    """Accuracy-aware retries name ONNX nodes whose weights must stay float: those weights are not int8."""
    src = sources["bert_block"]
    names = [n.name or n.output[0] for n in onnx.load(str(src)).graph.node if n.op_type == "MatMul"][:2]
    full = exporter.export(src, tmp_path / "all.mlpackage", "int8")
    kept = exporter.export(src, tmp_path / "kept.mlpackage", "int8", keep_float=names)

    def n_quant(pkg) -> int:
        _, spec = mil_eval.load_program(pkg)
        return sum(op.type == "constexpr_affine_dequantize" for f in spec.mlProgram.functions.values()
                   for b in f.block_specializations.values() for op in b.operations)

    assert n_quant(kept) == n_quant(full) - 2
    assert len(mil_eval.io_metadata(mil_eval.load_program(kept)[1])["kept_float"]) == 2
    feeds = _feeds("bert_block")
    ref = models.ort_reference(src, feeds)["hidden"]
    _close(ref, exporter.evaluate(kept, feeds)["hidden"], "int8")


def test_int8_weights_tuned_on_calibration(exporter, tmp_path):
    """With calibration data, int8 ships GPTQ-rounded, bias-corrected weights (qtune.int8_grid_weights):
    coremltools keeps the grid they sit on, so the package computes what the tuned ONNX model computes (up to
    fp16), and it is closer to fp32 than round-to-nearest int8 on held-out inputs."""
    from edgekit.converters.calibration import samples
    from edgekit.converters.canonical import io_specs
    from edgekit.converters.qtune import int8_grid_weights

    model = models.pointwise_cnn()
    src = models.save(model, tmp_path / "pw.onnx")
    rng = np.random.default_rng(0)
    calib = {"image": rng.standard_normal((48, 3, 12, 12)).astype(np.float32)}
    held = [{"image": x} for x in rng.standard_normal((16, 1, 3, 12, 12)).astype(np.float32)]
    tuned_pkg = exporter.export(src, tmp_path / "tuned.mlpackage", "int8", calibration=calib)
    plain_pkg = exporter.export(src, tmp_path / "plain.mlpackage", "int8")
    fp16_pkg = exporter.export(src, tmp_path / "fp16.mlpackage", "fp16")
    meta = mil_eval.io_metadata(mil_eval.load_program(tuned_pkg)[1])
    assert meta["tuned_weights"] == 3 and meta["kept_float"]           # expand, project, fc; the stem stays float
    tuned_onnx, n = int8_grid_weights(model, samples(calib, io_specs(model)[0]), min_size=128, skip=["stem"])
    tuned_src = models.save(tuned_onnx, tmp_path / "tuned.onnx")

    def err(pkg, ref_src) -> float:
        return max(float(np.abs(exporter.evaluate(pkg, f)["logits"] - models.ort_reference(ref_src, f)["logits"]
                                ).max()) for f in held)

    fp16_noise = err(fp16_pkg, src)
    assert err(tuned_pkg, tuned_src) <= 2 * fp16_noise + 1e-6          # the package's weights are the tuned ones
    tuned, plain = err(tuned_pkg, src), err(plain_pkg, src)
    assert tuned < plain, (tuned, plain)


# --- LSTM (silero-vad's recurrent block) --------------------------------------------------------------

LSTM_VARIANTS = {"forward": {}, "bidirectional": {"direction": "bidirectional", "peepholes": True, "batch": 2},
                 "reverse": {"direction": "reverse"}}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("variant", sorted(LSTM_VARIANTS))
def test_lstm_matches_onnxruntime(exporter, tmp_path, variant, precision):
    """ONNX LSTM -> MIL lstm (gates iofc -> ifoz, Wb + Rb, states [batch, dirs*H]); Y, Y_h, Y_c in ONNX layout
    match onnxruntime on random inputs and states: fp32 to ~1e-5, fp16 to ~1e-2 (of the output's scale)."""
    model = models.lstm_model(**LSTM_VARIANTS[variant])
    src = models.save(model, tmp_path / "lstm.onnx")
    pkg = exporter.export(src, tmp_path / "lstm.mlpackage", precision)
    _, spec = mil_eval.load_program(pkg)
    assert "lstm" in _op_types(spec)
    rng = np.random.default_rng(7)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input}
    ref = models.ort_reference(src, feeds)
    got = exporter.evaluate(pkg, feeds)
    assert set(got) == {"Y", "Y_h", "Y_c"} == set(ref)
    for k in ref:
        _close(ref[k], got[k], precision)


@pytest.mark.parametrize("attrs, why", [({"layout": 1}, "layout=1"), ({"clip": 0.5}, "clip"),
                                        ({"input_forget": 1}, "input_forget"),
                                        ({"activations": ["Sigmoid", "Softsign", "Tanh"]}, "Softsign")])
def test_lstm_unsupported_attributes(exporter, tmp_path, attrs, why):
    model = models.lstm_model()
    model.graph.node[0].attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    src = tmp_path / "lstm.onnx"
    onnx.save(model, str(src))
    with pytest.raises(UnsupportedOpError, match=f"'lstm'.*LSTM.*{why}"):
        exporter.export(src, tmp_path / "lstm.mlpackage", "fp32")


def test_slice_int64_extreme_ends(exporter, tmp_path):
    """torch exports ``x[:, k:]`` / ``x[::-1]`` with ends INT64_MAX / -INT64_MAX (silero-vad's STFT): narrowed to
    int32 they saturate (to the end), not wrap to -1 / 1."""
    big = np.iinfo(np.int64).max
    n = helper.make_node
    const = lambda name, v: n("Constant", [], [name], value=numpy_helper.from_array(np.array(v, np.int64)))  # noqa: E731
    nodes = [const("s", [2]), const("e", [big]), const("ax", [1]), const("rs", [-1]), const("re", [-big]),
             const("st", [-1]), n("Slice", ["x", "s", "e", "ax"], ["tail"]),
             n("Slice", ["tail", "rs", "re", "ax", "st"], ["y"])]
    src = models.save(models.float_graph("slices", nodes, {"x": [2, 6]}, {"y": [2, 4]}, []), tmp_path / "s.onnx")
    pkg = exporter.export(src, tmp_path / "s.mlpackage", "fp32")
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(2, 6)}
    got, ref = exporter.evaluate(pkg, feeds)["y"], models.ort_reference(src, feeds)["y"]
    np.testing.assert_array_equal(got, ref)


def test_lstm_graph_check_fp16_program():
    """An iOS17 MIL lstm in fp16 (the exporter's iOS16 packages keep lstm in fp32) evaluates in float16: within
    ~1e-2 of the same program in fp32."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(0)
    hid, size, seq, batch = 8, 4, 6, 2
    w = {"weight_ih": (4 * hid, size), "weight_hh": (4 * hid, hid), "bias": (4 * hid,)}
    w = {k: (rng.standard_normal(s) * 0.4).astype(np.float32) for k, s in w.items()}

    def program(dt):
        npdt = np.float16 if dt == types.fp16 else np.float32
        specs = [mb.TensorSpec((seq, batch, size), dt), mb.TensorSpec((batch, hid), dt),
                 mb.TensorSpec((batch, hid), dt)]

        @mb.program(input_specs=specs, opset_version=ct.target.iOS17)
        def prog(x, h, c):
            return mb.lstm(x=x, initial_h=h, initial_c=c, output_sequence=True,
                           **{k: v.astype(npdt) for k, v in w.items()})
        return prog

    feeds = {"x": rng.standard_normal((seq, batch, size)), "h": rng.standard_normal((batch, hid)),
             "c": rng.standard_normal((batch, hid))}
    full = list(mil_eval.evaluate_program(program(types.fp32), feeds).values())
    half = list(mil_eval.evaluate_program(program(types.fp16), feeds).values())
    assert len(half) == 3 and all(h.dtype == np.float16 for h in half)
    for ref, got in zip(full, half):
        _close(ref, got.astype(np.float32), "fp16")
