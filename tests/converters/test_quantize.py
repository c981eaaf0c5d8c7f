"""Quantization through onnxruntime.quantization: every produced file runs in onnxruntime, compared with fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgekit.converters import calibration, canonical, quantize
from edgekit.errors import InputError

import models


def _canon(model, tmp_path, name):
    m = canonical.canonicalize(model)
    p = tmp_path / f"{name}.onnx"
    onnx.save(m, str(p))
    return p, canonical.io_specs(m)[0]


def _cos(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("name,builder", [("cnn", None), ("mlp", models.mlp), ("bert", models.bert_block)])
@pytest.mark.parametrize("precision,min_cos", [("fp16", 0.9999), ("int8-dynamic", 0.985), ("int8", 0.985)])
def test_variant_matches_fp32(tmp_path, request, name, builder, precision, min_cos):
    """cnn is the digits CNN calibrated on digits (its output depends on its input): besides the cosine, its
    top-1 class must agree on >= 95% of 64 held-out digits where fp32 is decided (a variant ignoring its input
    agrees on ~10%)."""
    model = onnx.load(str(request.getfixturevalue("digits_cnn_onnx"))) if builder is None else builder()
    src, ins = _canon(model, tmp_path, name)
    if builder is None:
        cal = calibration.check_samples({"image": models.digits_images(models.DIGITS_TRAIN, 32)}, ins, "test")
    else:
        cal = calibration.synthetic(ins, n=32, seed=1)
    cal_part, hold = calibration.split(cal)
    dst = quantize.quantize(src, tmp_path / f"{name}-{precision}.onnx", precision, cal_part, ins)
    feeds = calibration.samples(hold, ins)
    ref = [models.ort_reference(src, f) for f in feeds]
    got = [models.ort_reference(dst, f) for f in feeds]
    cos = []
    for r, g in zip(ref, got):
        (k, rv), = r.items()
        assert g[k].dtype == np.float32                    # I/O stays fp32 for every precision
        cos.append(_cos(rv, g[k]))
    # tolerance: mean cosine vs fp32 over held-out samples; per sample >= 0.95 (8-bit on 16-wide layers)
    assert np.mean(cos) >= min_cos and min(cos) >= 0.95, (precision, cos)
    if precision == "fp16":
        for r, g in zip(ref, got):
            (k, rv), = r.items()
            assert np.abs(rv - g[k]).max() <= 5e-3        # fp16 rounding on O(1) activations
    if builder is None:
        xs = models.digits_images(models.DIGITS_TRAIN + 100, 64)
        r = np.concatenate([models.ort_reference(src, {"image": x[None]})["probs"] for x in xs])
        g = np.concatenate([models.ort_reference(dst, {"image": x[None]})["probs"] for x in xs])
        agree, n = models.decided_top1(r, g)
        assert n >= 40 and agree >= 0.95, (precision, agree, n)


def test_static_int8_is_qdq_per_channel(tmp_path):
    src, ins = _canon(models.cnn(), tmp_path, "cnn")
    dst = quantize.static_int8(src, tmp_path / "q.onnx", calibration.synthetic(ins, 8), ins, float_stem=False)
    m = onnx.load(str(dst))
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in m.graph.initializer}
    # the first Conv's weight is dequantized with one scale per output channel (8)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    deq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == conv.input[1])
    assert list(inits[deq.input[1]].dims) == [8]
    assert (tmp_path / "q.onnx").stat().st_size < src.stat().st_size


def test_keep_float_leaves_node_unquantized(tmp_path):
    src, ins = _canon(models.cnn(), tmp_path, "cnn")
    m0 = onnx.load(str(src))
    conv0 = next(n.name for n in m0.graph.node if n.op_type == "Conv")
    dst = quantize.static_int8(src, tmp_path / "q.onnx", calibration.synthetic(ins, 8), ins, keep_float=[conv0])
    m = onnx.load(str(dst))
    conv = next(n for n in m.graph.node if n.op_type == "Conv" and n.name == conv0)
    assert conv.input[1] == "c1w"        # weight still the float initializer, no DequantizeLinear in front
    dq = quantize.to_fp16(src, tmp_path / "h.onnx", keep_float=[conv0])
    inits = {i.name: i.data_type for i in onnx.load(str(dq)).graph.initializer}
    assert inits["c1w"] == onnx.TensorProto.FLOAT and inits["c2w"] == onnx.TensorProto.FLOAT16


def test_static_int8_without_calibration_names_the_flag(tmp_path):
    src, ins = _canon(models.cnn(), tmp_path, "cnn")
    with pytest.raises(InputError, match="--calibration"):
        quantize.quantize(src, tmp_path / "q.onnx", "int8", None, ins)


def test_bad_precision_and_method(tmp_path):
    src, ins = _canon(models.cnn(), tmp_path, "cnn")
    with pytest.raises(InputError, match="int4"):
        quantize.check_precision("int4")
    with pytest.raises(InputError, match="calibration method"):
        quantize.static_int8(src, tmp_path / "q.onnx", calibration.synthetic(ins, 4), ins, method="magic")


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_calibration_methods(tmp_path, digits_cnn_onnx, method):
    """Histogram calibration of the digits CNN on digits: top-1 agrees with fp32 on >= 95% of 64 held-out digits
    where fp32 is decided, mean cosine >= 0.98 (looser than minmax: histogram methods clip outliers)."""
    src, ins = _canon(onnx.load(str(digits_cnn_onnx)), tmp_path, "cnn")
    cal = calibration.check_samples({"image": models.digits_images(models.DIGITS_TRAIN, 16)}, ins, "test")
    dst = quantize.static_int8(src, tmp_path / f"{method}.onnx", cal, ins, method=method)
    xs = models.digits_images(models.DIGITS_TRAIN + 100, 64)
    r = np.concatenate([models.ort_reference(src, {"image": x[None]})["probs"] for x in xs])
    g = np.concatenate([models.ort_reference(dst, {"image": x[None]})["probs"] for x in xs])
    agree, n = models.decided_top1(r, g)
    assert n >= 40 and agree >= 0.95, (method, agree, n)
    assert np.mean([_cos(a, b) for a, b in zip(r, g)]) >= 0.98


def _dw_model():
    """image[1,3,8,8] -> stem Conv -> Clip(0,6) -> depthwise 3x3 -> Clip -> pointwise 1x1 (an MBConv in small)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), "stem_w"),
             numpy_helper.from_array(rng.normal(0, 0.3, (16, 1, 3, 3)).astype(np.float32), "dw_w"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 16, 1, 1)).astype(np.float32), "pw_w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "dw_b"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "pw_b"),
             numpy_helper.from_array(np.array(0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["image", "stem_w"], ["s"], pads=[1, 1, 1, 1], name="stem"),
             helper.make_node("Clip", ["s", "lo", "hi"], ["s6"], name="clip1"),
             helper.make_node("Conv", ["s6", "dw_w", "dw_b"], ["d"], pads=[1, 1, 1, 1], group=16, name="dw"),
             helper.make_node("Clip", ["d", "lo", "hi"], ["d6"], name="clip2"),
             helper.make_node("Conv", ["d6", "pw_w", "pw_b"], ["out"], name="pw")]
    g = helper.make_graph(nodes, "mb", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_static_int8_weight_bits_and_float_stem(tmp_path):
    """Regression: 7-bit weights only where x86 u8s8 GEMM kernels saturate; depthwise 8-bit; the image stem and
    the depthwise conv right after it float."""
    src, ins = _canon(_dw_model(), tmp_path, "mb")
    cal = calibration.synthetic(ins, 16, seed=2)

    def qweights(dst):
        m = onnx.load(str(dst))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
        producer = {o: n for n in m.graph.node for o in n.output}
        out = {}
        for n in m.graph.node:
            if n.op_type == "Conv":
                dq = producer.get(n.input[1])
                out[n.name] = None if dq is None or dq.op_type != "DequantizeLinear" else inits[dq.input[0]]
        return out

    dst = quantize.static_int8(src, tmp_path / "q.onnx", cal, ins)
    q = qweights(dst)
    assert q["stem"] is None and q["dw"] is None                    # the 3-channel stem and its depthwise: float
    assert np.abs(q["pw"]).max() <= 64                              # GEMM-like: 7-bit (no VPMADDUBSW saturation)
    feeds = calibration.samples(cal, ins)[:4]
    for f in feeds:
        (k, r), = models.ort_reference(src, f).items()
        assert _cos(r, models.ort_reference(dst, f)[k]) >= 0.99      # int8 vs fp32 on its calibration inputs
    q = qweights(quantize.static_int8(src, tmp_path / "q2.onnx", cal, ins, float_stem=False))
    assert np.abs(q["dw"]).max() == 127                             # depthwise: full 8-bit per-channel range
    assert np.abs(q["stem"]).max() <= 64 and np.abs(q["pw"]).max() <= 64


def test_bias_correction_removes_the_mean_shift(tmp_path):
    """Corrected int8 biases cancel the per-channel mean shift that weight rounding adds (vs fp32, ORT)."""
    src, ins = _canon(_dw_model(), tmp_path, "mb")
    cal = calibration.synthetic(ins, 16, seed=5)
    feeds = calibration.samples(cal, ins)
    ref = np.stack([models.ort_reference(src, f)["out"] for f in feeds]).astype(np.float64)
    shift, cos = {}, {}
    for bc in (False, True):
        dst = quantize.static_int8(src, tmp_path / f"q{bc}.onnx", cal, ins, bias_correction=bc)
        got = np.stack([models.ort_reference(dst, f)["out"] for f in feeds]).astype(np.float64)
        shift[bc] = np.abs((got - ref).mean(axis=(0, 1, 3, 4))).mean()     # mean error per output channel
        cos[bc] = _cos(ref, got)
    # tolerance: the correction must at least halve the mean channel shift and not lower cosine by > 1e-3
    assert shift[True] <= 0.5 * shift[False], shift
    assert cos[True] >= cos[False] - 1e-3, cos


def test_gptq_rounding_lowers_output_error(tmp_path):
    """GPTQ-rounded int8 weights give a smaller output error vs fp32 than nearest rounding (same scales)."""
    from edgekit.converters import qtune

    src, ins = _canon(_dw_model(), tmp_path, "mb")
    cal = calibration.synthetic(ins, 24, seed=7)
    feeds = calibration.samples(cal, ins)
    ref = np.stack([models.ort_reference(src, f)["out"] for f in feeds]).astype(np.float64)
    err = {}
    for opt in (False, True):
        dst = quantize.static_int8(src, tmp_path / f"g{opt}.onnx", cal, ins, optimize_rounding=opt,
                                   bias_correction=False)
        got = np.stack([models.ort_reference(dst, f)["out"] for f in feeds]).astype(np.float64)
        err[opt] = float(np.mean((got - ref) ** 2))
    assert err[True] < err[False], err                  # strictly better on the data it was tuned on
    m = onnx.load(str(src))
    assert qtune.gptq_round(m, tmp_path / "gTrue.onnx", feeds) == 1    # only the pointwise Conv qualifies


def test_int8_grid_weights(tmp_path):
    """Weight-only int8 tuning: every tuned weight is k * max|w|/127 per output channel with some |k| = 127 (the
    grid coremltools' symmetric int8 rounds to), a conv without bias gets one, skipped nodes are untouched, and
    on held-out inputs the output is closer to fp32 than round-to-nearest on the same grid."""
    from onnx import numpy_helper

    from edgekit.converters.qtune import int8_grid_weights

    model = models.pointwise_cnn()
    rng = np.random.default_rng(0)
    feeds = [{"image": x} for x in rng.standard_normal((48, 1, 3, 12, 12)).astype(np.float32)]
    held = [{"image": x} for x in rng.standard_normal((16, 1, 3, 12, 12)).astype(np.float32)]
    tuned, n = int8_grid_weights(model, feeds, min_size=128, skip=["stem"])
    assert n == 3
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in tuned.graph.initializer}
    np.testing.assert_array_equal(after["sw"], before["sw"])                 # skipped
    for name, axis in (("p1w", 0), ("p2w", 0), ("fw", 0)):
        w = np.moveaxis(after[name], axis, 0).reshape(after[name].shape[axis], -1).astype(np.float64)
        k = w / (np.abs(w).max(axis=1, keepdims=True) / 127)
        np.testing.assert_allclose(k, np.round(k), atol=1e-3)
        assert (np.abs(np.round(k)).max(axis=1) == 127).all()
    expand = next(n for n in tuned.graph.node if n.name == "expand")
    assert len(expand.input) == 3 and expand.input[2] in after             # bias correction added a bias

    rtn = onnx.ModelProto()
    rtn.CopyFrom(model)
    for init in rtn.graph.initializer:
        if init.name in ("p1w", "p2w", "fw"):
            w = numpy_helper.to_array(init)
            s = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / 127
            s = s.reshape((-1,) + (1,) * (w.ndim - 1))
            init.CopyFrom(numpy_helper.from_array((np.round(w / s) * s).astype(np.float32), init.name))

    def err(m) -> float:
        p = models.save(m, tmp_path / "m.onnx")
        return float(np.mean([np.square(models.ort_reference(p, f)["logits"] - ref).mean()
                              for f, ref in zip(held, refs)]))

    src = models.save(model, tmp_path / "fp32.onnx")
    refs = [models.ort_reference(src, f)["logits"] for f in held]
    assert err(tuned) < err(rtn)


def test_int8_grid_weights_matmul(tmp_path):
    """Transformer MatMul weights [in, out] are tuned per output column (the axis coremltools quantizes a matmul's
    weight on), from statistics over tokens; closer to fp32 than round-to-nearest on held-out ids."""
    from onnx import numpy_helper

    from edgekit.converters.qtune import int8_grid_weights

    model = canonical.canonicalize(models.bert_block())
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (56, 1, 8)).astype(np.int64)
    tuned, n = int8_grid_weights(model, [{"input_ids": x} for x in ids[:48]], min_size=128)
    mats = [nd.input[1] for nd in model.graph.node if nd.op_type == "MatMul"
            and nd.input[1] in {i.name for i in model.graph.initializer}]
    assert n == len(mats) == 6
    after = {i.name: numpy_helper.to_array(i) for i in tuned.graph.initializer}
    rtn = onnx.ModelProto()
    rtn.CopyFrom(model)
    for init in rtn.graph.initializer:
        if init.name in mats:
            w = numpy_helper.to_array(init)
            s = np.abs(w).max(axis=0, keepdims=True) / 127
            init.CopyFrom(numpy_helper.from_array((np.round(w / s) * s).astype(np.float32), init.name))
    for name in mats:
        w = after[name].astype(np.float64)
        k = w / (np.abs(w).max(axis=0, keepdims=True) / 127)
        np.testing.assert_allclose(k, np.round(k), atol=1e-3)
        assert (np.abs(np.round(k)).max(axis=0) == 127).all()
    src = models.save(model, tmp_path / "fp32.onnx")
    out = canonical.io_specs(model)[1][0].name

    def err(m) -> float:
        p = models.save(m, tmp_path / "m.onnx")
        return float(np.mean([np.square(models.ort_reference(p, {"input_ids": x})[out]
                                        - models.ort_reference(src, {"input_ids": x})[out]).mean() for x in ids[48:]]))

    assert err(tuned) < err(rtn)


def test_int8_grid_weights_shared_bias(tmp_path):
    """Two convs sharing one bias initializer: each gets its own corrected copy; the shared values are kept."""
    from onnx import helper, numpy_helper

    from edgekit.converters.qtune import int8_grid_weights

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8, 1, 1)).astype(np.float32), n) for n in ("wa", "wb")]
    inits.append(numpy_helper.from_array(np.full(16, 3.0, np.float32), "b"))
    nodes = [helper.make_node("Conv", ["x", "wa", "b"], ["ya"], name="A"),
             helper.make_node("Conv", ["x", "wb", "b"], ["yb"], name="B")]
    model = models.float_graph("shared", nodes, {"x": [1, 8, 4, 4]}, {"ya": [1, 16, 4, 4], "yb": [1, 16, 4, 4]},
                               inits)
    feeds = [{"x": x} for x in rng.standard_normal((24, 1, 8, 4, 4)).astype(np.float32)]
    tuned, n = int8_grid_weights(model, feeds)
    assert n == 2
    biases = {nd.name: nd.input[2] for nd in tuned.graph.node}
    assert biases["A"] != biases["B"]
    vals = {i.name: numpy_helper.to_array(i) for i in tuned.graph.initializer}
    for name in ("A", "B"):
        assert np.abs(vals[biases[name]] - 3.0).max() < 0.1          # corrected copies of the shared bias
    src, dst = models.save(model, tmp_path / "m.onnx"), models.save(tuned, tmp_path / "t.onnx")
    for f in feeds[:4]:
        ref, got = models.ort_reference(src, f), models.ort_reference(dst, f)
        for k in ("ya", "yb"):
            assert np.abs(got[k] - ref[k]).max() < 0.05 * np.abs(ref[k]).max()


@pytest.mark.parametrize("builder", [models.pointwise_cnn, models.conv_bn_opset11])
def test_dynamic_int8_stores_conv_weights_in_int8(tmp_path, builder):
    """Conv weights become int8 (per output channel, dequantized in front of the Conv; an opset-11 model is
    upgraded for the ``axis``); the image stem stays float; the output stays within 8-bit error of fp32."""
    src, ins = _canon(builder(), tmp_path, "src")
    dst = quantize.quantize(src, tmp_path / "dyn.onnx", "int8-dynamic", None, ins)
    model = onnx.load(str(dst))
    inits = {t.name: t for t in model.graph.initializer}
    stem = set(quantize.stem_nodes(onnx.load(str(src))))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for n in convs:
        if n.name in stem:
            assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
        else:
            q = dq[n.input[1]]
            assert inits[q.input[0]].data_type == onnx.TensorProto.INT8 and q.attribute[0].i == 0
    assert sum(n.name not in stem for n in convs) >= 1 and stem
    rng = np.random.default_rng(3)
    for _ in range(4):
        x = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in ins}
        (k, want), = models.ort_reference(src, x).items()
        assert _cos(want, models.ort_reference(dst, x)[k]) > 0.999   # tolerance: per-channel 8-bit weights


def test_weight_only_int8_runs_with_its_weights_folded(tmp_path, mlp_onnx):
    """ONNX Runtime keeps a weight's DequantizeLinear per call unless QDQ handling is off (a Conv then loses its
    prepacked kernels: EfficientNet-Lite0 3x slower). edgekit opens weight-only int8 models with it off, and models
    with quantized activations (static QDQ int8) with it on, so their QDQ units still fuse into int8 kernels."""
    import edgekit
    from edgekit.runtimes.ort import weight_only_qdq

    src, ins = _canon(models.pointwise_cnn(), tmp_path, "pw")
    dyn = quantize.quantize(src, tmp_path / "dyn.onnx", "int8-dynamic", None, ins)
    cal = calibration.synthetic(ins, n=8, seed=1)
    static = quantize.quantize(src, tmp_path / "static.onnx", "int8", cal, ins)
    assert weight_only_qdq(dyn) and not weight_only_qdq(static) and not weight_only_qdq(src)
    def qdq_off(path) -> str:
        opts = edgekit.load(path)._runner._sess.get_session_options()
        try:
            return opts.get_session_config_entry("session.disable_quant_qdq")
        except RuntimeError:          # not set: ONNX Runtime's default (QDQ handling on)
            return "0"

    assert [qdq_off(p) for p in (dyn, static, src)] == ["1", "0", "0"]
    x = {"image": np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)}
    got = edgekit.load(dyn).run(x)["logits"]
    np.testing.assert_allclose(got, models.ort_reference(dyn, x)["logits"], rtol=1e-5, atol=1e-6)  # same math
