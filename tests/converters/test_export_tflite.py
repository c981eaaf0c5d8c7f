"""TFLite exporter: ONNX (cnn, bert_block, mlp) -> .tflite at every precision, run in LiteRT through
``edgekit.load`` and compared with onnxruntime on the ONNX source; bad inputs; the tool environment.

The first test builds the onnx2tf tool environment (a few minutes, once per machine; cached afterwards).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.converters import get_exporter, toolenv
from edgekit.errors import ConversionError, InputError, OutputExistsError, UnsupportedOpError

import models

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None, reason="LiteRT (edgekit-sdk[tflite]) is not installed"
)

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")
N_CAL, N_EVAL = 32, 16


@pytest.fixture(scope="module")
def tool_env() -> Path:
    """The onnx2tf tool environment, built on first use (skipped, with pip's reason, if it cannot be)."""
    return _ensure_tool_env(toolenv.ONNX2TF)


def _ensure_tool_env(env) -> Path:
    """``env`` built (once, cached); skipped with the reason where it cannot be, but under CI (``CI=true``) that
    is a failure: a CI machine that cannot build it would silently stop testing the TFLite exporters."""
    stop = pytest.fail if os.environ.get("CI", "").lower() in ("1", "true", "yes") else pytest.skip
    reason = toolenv.unavailable_reason(env)
    if reason:
        stop(reason)
    try:
        return toolenv.ensure(env)
    except toolenv.ToolEnvError as exc:
        stop(f"{env.name} tool environment cannot be built here: {exc}")


def _inputs(name: str, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "cnn":
        return {"image": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)}
    if name == "bert_block":
        return {"input_ids": rng.integers(0, 100, (n, 8)).astype(np.int64)}
    return {"x": rng.standard_normal((n, 16)).astype(np.float32)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tflite-src")
    return {name: models.save(getattr(models, name)(), d / f"{name}.onnx") for name in ("cnn", "bert_block", "mlp")}


@pytest.fixture(scope="module")
def exported(tool_env, sources, tmp_path_factory):
    """Every precision of each source, exported once (one onnx2tf run per model) and shared by the tests."""
    cache: dict[str, dict[str, Path]] = {}

    def get(name: str) -> dict[str, Path]:
        if name not in cache:
            d = tmp_path_factory.mktemp(f"tflite-{name}")
            cache[name] = get_exporter("tflite").export_all(
                sources[name], {p: d / f"{name}-{p}.tflite" for p in PRECISIONS},
                calibration=_inputs(name, N_CAL, seed=1))
        return cache[name]
    return get


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", ["cnn", "bert_block", "mlp"])
def test_export_runs_in_litert_and_matches_onnxruntime(exported, sources, name, precision):
    src = sources[name]
    out = exported(name)[precision]
    assert out.is_file() and out.stat().st_size > 0

    sess = edgekit.load(out)
    onnx_in = [i.name for i in edgekit.load(src).inputs]
    # same inputs, in the same order and layout (NCHW stays NCHW), float or the source's int type
    assert [i.name for i in sess.inputs] == onnx_in
    feeds_all = _inputs(name, N_EVAL, seed=2)
    got, ref = [], []
    for i in range(N_EVAL):
        feeds = {k: v[i:i + 1] for k, v in feeds_all.items()}
        res = sess.run(feeds)
        assert len(res) == 1
        out_arr = next(iter(res.values()))
        assert out_arr.dtype == np.float32  # float outputs at every precision (dequantized inside)
        got.append(out_arr)
        ref.append(next(iter(models.ort_reference(src, feeds).values())))
    got, ref = np.concatenate(got), np.concatenate(ref)
    assert got.shape == ref.shape
    err = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max())
    cos = _cosine(got, ref)
    if precision == "fp32":
        assert err <= 1e-4 * max(1.0, scale), err  # same float32 math, different kernels
    elif precision == "fp16":
        assert err <= 1e-2 * max(1.0, scale) and cos >= 0.9999, (err, cos)  # fp16 weights, fp32 compute
    else:
        assert cos >= 0.99, cos  # int8 weights (and activations for static int8)
        if name == "cnn":  # classifier: top-1 agreement with the fp32 ONNX model
            agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
            assert agree >= 0.9, agree


@pytest.mark.slow
def test_static_int8_is_smaller_and_quantized(exported):
    f32, i8 = exported("bert_block")["fp32"], exported("bert_block")["int8"]
    assert i8.stat().st_size < 0.5 * f32.stat().st_size  # int8 weights: well under half of fp32
    from edgekit.runtimes.litert import interpreter_class

    interp = interpreter_class()(model_path=str(i8))
    types = {np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    assert np.dtype(np.int8) in types, types  # int8 activations inside, float32 at the edges


def test_static_int8_keeps_the_image_stem_float(exported):
    """Tuned int8 (the worker's tuned_int8, not its plain fallback): the conv reading the image input stays float,
    the later ones are int8."""
    from edgekit.runtimes.litert import interpreter_class

    interp = interpreter_class()(model_path=str(exported("cnn")["int8"]))
    ops = interp._get_ops_details()     # LiteRT's op list: the only way to see which conv got which weights
    convs = [op for op in ops if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) >= 2, ops
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    first, rest = convs[0], convs[1:]
    assert dtypes[first["inputs"][1]] == np.float32, first          # stem: float weights
    assert all(dtypes[op["inputs"][1]] == np.int8 for op in rest), rest


def test_unsupported_op_names_the_node(tool_env, tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("FancyOp", ["x"], ["y"], name="my_fancy_node", domain="com.example")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    m.ir_version = 8
    src = models.save(m, tmp_path / "fancy.onnx")
    with pytest.raises(UnsupportedOpError, match=r"my_fancy_node.*FancyOp"):
        get_exporter("tflite").export(src, tmp_path / "fancy.tflite", "fp32")
    assert not (tmp_path / "fancy.tflite").exists()  # no half-written output


def test_bad_inputs_are_typed_errors(tmp_path, sources):
    exp = get_exporter("tflite")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(ConversionError, match="junk.onnx"):
        exp.export(junk, tmp_path / "j.tflite", "fp32")
    with pytest.raises(InputError, match="does not exist"):
        exp.export(tmp_path / "missing.onnx", tmp_path / "m.tflite", "fp32")
    with pytest.raises(InputError, match="calibration"):
        exp.export(sources["cnn"], tmp_path / "c.tflite", "int8")
    with pytest.raises(InputError, match="fp32, fp16, int8-dynamic, int8"):
        exp.export(sources["cnn"], tmp_path / "c.tflite", "int4")
    with pytest.raises(InputError, match="unknown option"):
        exp.export(sources["cnn"], tmp_path / "c.tflite", "fp32", bogus=1)


def test_existing_output_needs_force(sources, tmp_path):
    out = tmp_path / "mlp.tflite"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):  # raised before any conversion work
        get_exporter("tflite").export(sources["mlp"], out, "fp32")
    assert out.read_bytes() == b"keep me"


def test_gelu_fusion_matches_erf_graph(tmp_path, sources):
    """The opset-20 Gelu rewrite (avoids FlexErf) computes the same function as the erf chain."""
    from edgekit.converters.export_tflite import prepare_onnx

    dst = tmp_path / "fused.onnx"
    facts = prepare_onnx(sources["bert_block"], dst)
    assert facts["gelu_fused"] == 1 and not facts["erf_left"]
    feeds = _inputs("bert_block", 1, seed=3)
    a = models.ort_reference(sources["bert_block"], feeds)["hidden"]
    b = models.ort_reference(dst, feeds)["hidden"]
    assert np.abs(a - b).max() <= 1e-5  # exact GELU both ways; only float rounding differs


def test_unbuildable_tool_env_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_TOOLS_DIR", str(tmp_path / "tools"))
    missing = tmp_path / "edgekit_missing-0.0.0-py3-none-any.whl"  # a local path: no network needed
    env = toolenv.ToolEnv(name="broken", version="0", requirements=(str(missing),))
    with pytest.raises(toolenv.ToolEnvError) as info:
        toolenv.ensure(env)
    msg = str(info.value)
    assert "could not create the broken tool environment" in msg and str(env.path) in msg
    assert "edgekit_missing" in msg and "log" in msg
    assert not env.path.exists() and not env.is_ready()  # no half-built environment is left to be reused


def test_tool_env_is_cached(tool_env):
    assert toolenv.ONNX2TF.is_ready()
    assert toolenv.ensure(toolenv.ONNX2TF) == tool_env  # second call: no rebuild
    assert tool_env.parent.parent.name.startswith("onnx2tf-1.29.24-py")
    assert toolenv.ONNX2TF.path.parent == toolenv.tools_dir()


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_export_torch_runs_in_litert_and_matches_torch(tool_env, tmp_path, precision):
    """PyTorch source. With litert-torch here: export_torch (fp32, fp16, PT2E int8-dynamic; static int8 through
    the ONNX path). Without it (CI: it is outside `all`), through the cached litert-torch tool environment:
    fp32 by export_torch_signatures, int8-dynamic by dynamic_range_int8 (ai-edge-quantizer) of that fp32."""
    torch = pytest.importorskip("torch")
    from edgekit.converters.export_tflite import dynamic_range_int8, export_torch, export_torch_signatures

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 10)).eval()
    example = (torch.randn(1, 16),)
    if importlib.util.find_spec("litert_torch") is not None:
        cal = [(torch.randn(1, 16),) for _ in range(N_CAL)] if precision == "int8" else None
        out = export_torch(net, example, tmp_path / f"net-{precision}.tflite", precision, calibration=cal)
    elif precision in ("fp16", "int8"):
        pytest.skip(f"PyTorch -> TFLite {precision} needs litert-torch in this environment (export_torch); the "
                    "tool environment serves fp32 and dynamic-range int8 (both tested here)")
    else:
        _ensure_tool_env(toolenv.LITERT_TORCH)
        out = export_torch_signatures(net, {"serving_default": example}, tmp_path / "net-fp32.tflite")
        if precision == "int8-dynamic":
            out = dynamic_range_int8(out, tmp_path / "net-int8-dynamic.tflite")
    sess = edgekit.load(out)
    assert len(sess.inputs) == 1 and sess.inputs[0].dtype == np.float32 and sess.outputs[0].dtype == np.float32
    xs = torch.randn(N_EVAL, 16)
    with torch.no_grad():
        ref = net(xs).numpy()
    got = np.concatenate([next(iter(sess.run({sess.inputs[0].name: xs[i:i + 1].numpy()}).values()))
                          for i in range(N_EVAL)])
    err, cos = float(np.abs(got - ref).max()), _cosine(got, ref)
    if precision == "fp32":
        assert err <= 1e-4, err  # same float32 math
    elif precision == "fp16":
        assert err <= 1e-2 and cos >= 0.9999, (err, cos)  # fp16 weights
    else:
        assert cos >= 0.99, cos  # int8 weights (and activations for static int8)


@pytest.mark.slow
def test_unsorted_input_order_is_kept(tool_env, tmp_path):
    """LiteRT sorts signature inputs and outputs by name; the exporter keeps the source's order: zeta before
    alpha, and the outputs zsub before amul (names in reverse alphabetical order, so sorting would swap them)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Sub", ["zeta", "alpha"], ["zsub"]), helper.make_node("Mul", ["zeta", "alpha"], ["amul"])]
    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("zeta", "alpha")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("zsub", "amul")]
    m = helper.make_model(helper.make_graph(nodes, "order", spec, outs), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = models.save(m, tmp_path / "order.onnx")
    sess = edgekit.load(get_exporter("tflite").export(src, tmp_path / "order.tflite", "fp32"))
    assert [i.name for i in sess.inputs] == ["zeta", "alpha"]
    z, a = np.arange(4, dtype=np.float32)[None], np.full((1, 4), 10, np.float32)
    got = list(sess.run({"zeta": z, "alpha": a}).values())
    np.testing.assert_allclose(got[0], z - a, atol=0)  # outputs in source order too: zsub, then amul
    np.testing.assert_allclose(got[1], z * a, atol=0)


@pytest.mark.slow
def test_channel_first_output_layout_is_kept(tool_env, tmp_path):
    """onnx2tf leaves 4-D outputs NHWC; the exporter transposes them back so [1, 8, 16, 16] stays NCHW."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["feat"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["feat"], ["out"])]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 16, 16])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = models.save(m, tmp_path / "conv.onnx")
    sess = edgekit.load(get_exporter("tflite").export(src, tmp_path / "conv.tflite", "fp32"))
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = next(iter(sess.run({"image": x}).values()))
    ref = models.ort_reference(src, {"image": x})["out"]
    assert got.shape == ref.shape == (1, 8, 16, 16)
    np.testing.assert_allclose(got, ref, atol=1e-4)  # fp32: same math, NCHW both sides


@pytest.mark.slow
def test_standalone_erf_runs_without_flex(tool_env, tmp_path):
    """An Erf outside a GELU would become FlexErf (LiteRT cannot run it); onnx2tf's pseudo-erf is used instead."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Erf", ["x"], ["y"], name="lonely_erf")], "erf",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = models.save(m, tmp_path / "erf.onnx")
    x = np.linspace(-3, 3, 16, dtype=np.float32)[None]
    _fp32_matches_onnxruntime(src, tmp_path / "erf.tflite", feeds={"x": x}, rtol=1e-7, atol=1e-5)  # polynomial erf


def test_node_names_tensorflow_refuses_are_renamed(tool_env, tmp_path):
    """Paddle2ONNX names nodes like ``Softmax@0``; TensorFlow refuses '@' in a scope name, which failed the whole
    export of PP-OCR's text-orientation classifier. The copy given to onnx2tf renames them."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["h"], name="relu@0 (first)"),
                           helper.make_node("Softmax", ["h"], ["y"], name="Softmax@0", axis=1)], "paddle_names",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 7
    src = models.save(m, tmp_path / "paddle_names.onnx")
    x = np.linspace(-3, 3, 16, dtype=np.float32)[None]
    _fp32_matches_onnxruntime(src, tmp_path / "names.tflite", feeds={"x": x}, rtol=1e-7, atol=1e-6)  # fp32 softmax


def test_tool_timeout_kills_the_child(tmp_path):
    """A hung converter is killed at its timeout (the watchdog does not wait for the child's output to end)."""
    import time

    from edgekit.converters import toolenv

    why = toolenv.unavailable_reason() if callable(getattr(toolenv, "unavailable_reason", None)) else None
    if why:
        pytest.skip(why)
    t0 = time.perf_counter()
    code, out = toolenv.run_tool(toolenv.ONNX2TF, ["-c", "import time; print('up', flush=True); time.sleep(60)"],
                                 tmp_path, timeout=2)
    assert code == -9 and "timeout" in out and out.startswith("up")
    assert time.perf_counter() - t0 < 30


def test_cancel_stops_a_background_tool(tmp_path):
    """A conversion that fails while a tool runs in a background thread cancels it: the running child is killed
    and the thread starts no other until uncancelled."""
    import threading
    import time

    from edgekit.converters import toolenv

    why = toolenv.unavailable_reason()
    if why:
        pytest.skip(why)
    result, started = {}, threading.Event()

    def background():
        result["id"] = threading.get_ident()
        started.set()
        result["first"] = toolenv.run_tool(toolenv.ONNX2TF, ["-c", "import time; print('up', flush=True); "
                                                             "time.sleep(60)"], tmp_path, timeout=120,
                                           on_line=lambda ln: result.setdefault("up", time.perf_counter()))
        result["second"] = toolenv.run_tool(toolenv.ONNX2TF, ["-c", "print('never')"], tmp_path)
    t = threading.Thread(target=background)
    t0 = time.perf_counter()
    t.start()
    started.wait(10)
    while "up" not in result and time.perf_counter() - t0 < 60:   # the child is running
        time.sleep(0.05)
    toolenv.cancel(result["id"])
    t.join(30)
    toolenv.uncancel(result["id"])
    assert not t.is_alive() and result["first"][0] != 0             # killed, not finished after 60 s
    assert result["second"][0] == -9 and "never" not in result["second"][1] and "cancelled" in result["second"][1]
    assert time.perf_counter() - t0 < 40


def test_dynamic_range_int8_of_a_token_model_runs_in_litert(tmp_path, capfd, torch_to_tflite):
    """litert-torch fp32 -> ai-edge-quantizer dynamic-range int8 of a model with an embedding table (int token
    ids), in this environment or litert-torch's tool environment: it runs in LiteRT (PT2E's quantized table
    fails EMBEDDING_LOOKUP's prepare), weights ~4x smaller,
    cosine >= 0.99 vs torch; nothing of the converters' chatter reaches stdout."""
    torch = torch_to_tflite
    from edgekit.converters.export_tflite import dynamic_range_int8, export_torch_signatures

    class TokenNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(500, 64)
            self.ff = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))

        def forward(self, ids):
            return self.ff(self.emb(ids)).mean(1)

    torch.manual_seed(0)
    net = TokenNet().eval()
    f32 = export_torch_signatures(net, {"s12": (torch.randint(0, 500, (1, 12)),)}, tmp_path / "tok-fp32.tflite")
    q = dynamic_range_int8(f32, tmp_path / "tok-int8.tflite")
    out = capfd.readouterr().out
    assert "Quantiz" not in out and "LiteRT-Torch" not in out, out[:300]
    assert q.stat().st_size < 0.4 * f32.stat().st_size
    with pytest.raises(OutputExistsError):
        dynamic_range_int8(f32, q)  # no overwrite without force
    ids = torch.randint(0, 500, (N_EVAL, 12))
    with torch.no_grad():
        ref = net(ids).numpy()
    for path, tol in ((f32, 1e-5), (q, None)):
        sess = edgekit.load(path)
        name, dt = sess.inputs[0].name, sess.inputs[0].dtype  # litert-torch narrows int64 ids to int32
        got = np.concatenate([next(iter(sess.run({name: ids[i:i + 1].numpy().astype(dt)}).values()))
                              for i in range(N_EVAL)])
        if tol:
            np.testing.assert_allclose(got, ref, atol=tol)  # same float32 math
        else:
            assert _cosine(got, ref) >= 0.99, _cosine(got, ref)  # int8 weights, float activations


def _fp32_matches_onnxruntime(src: Path, out: Path, n: int = 4, seed: int = 0, feeds: dict | None = None,
                              rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """Export ``src`` at fp32, run it in LiteRT on ``feeds`` (else ``n`` random samples: float inputs N(0, 1),
    int64 ones 16000) and compare every output, by position, with ONNX Runtime's (the same float32 math: 1e-5 by
    default)."""
    import onnx

    sess = edgekit.load(get_exporter("tflite").export(src, out, "fp32"))
    spec = onnx.load(str(src)).graph.input
    assert [i.name for i in sess.inputs] == [i.name for i in spec]    # the source's order, not LiteRT's sorted one
    rng = np.random.default_rng(seed)
    samples = [feeds] if feeds is not None else [
        {i.name: np.array(16000, np.int64) if i.type.tensor_type.elem_type == onnx.TensorProto.INT64 else
         rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32) for i in spec}
        for _ in range(n)]
    for f in samples:
        got, want = list(sess.run(f).values()), list(models.ort_reference(src, f).values())
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


@pytest.mark.slow
def test_slice_over_channel_and_time_axes(tool_env, tmp_path):
    """A Slice over axes [1, 2] of a Conv1d output: onnx2tf maps the axes to its channel-last layout ([2, 1]) but
    applies starts/ends in the listed order, so silero-vad's STFT halves came out [8, 5, 257] and [8, 0, 257]
    ("UnboundLocalError: ... 'dummy_tensor'" at the Add). The copy given to onnx2tf has one-axis Slices."""
    _fp32_matches_onnxruntime(models.save(models.stft_magnitude(), tmp_path / "stft.onnx"), tmp_path / "stft.tflite")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["conv_lstm_state_io", "lstm_model", "lstm_bidirectional"])
def test_lstm_sequence_and_state_inputs_keep_their_layout(tool_env, tmp_path, name):
    """Rank-3 graph inputs that are an LSTM's sequence or initial state ([dirs, batch, hidden]) are not NCW
    feature maps: kept NCW, onnx2tf transposed them and its LSTM refused them ("initial_state ... shape=(16, 1)
    ... cell.state_size is [16, 16]"). They are kept in their shape; the inputs keep the source's order (x, h, c)
    although the LSTM's WHILE loop gives the .tflite three subgraphs."""
    model = models.lstm_model("bidirectional") if name == "lstm_bidirectional" else getattr(models, name)()
    _fp32_matches_onnxruntime(models.save(model, tmp_path / f"{name}.onnx"), tmp_path / f"{name}.tflite")


@pytest.mark.slow
def test_lstm_state_packed_in_one_input_and_output(tool_env, tmp_path):
    """silero-vad op15's decoder: state[2, 1, H] gathered into h and c, the new ones joined back on axis 0. onnx2tf
    transposed the state input (as above) and joined the [1, 1, H] halves on axis 1 (its Concat check compares
    values up to a transpose): stateN came out [1, 2, H], the same data with its unit dims moved, now reshaped."""
    src = models.save(models.lstm_packed_state(), tmp_path / "packed.onnx")
    _fp32_matches_onnxruntime(src, tmp_path / "packed.tflite")


@pytest.mark.slow
def test_rank0_input_stays_a_scalar(tool_env, tmp_path):
    """onnx2tf gives a rank-0 input (silero-vad's int64 ``sr``) the shape [None]; the .tflite takes a scalar."""
    src = models.save(models.scalar_input(), tmp_path / "scalar.onnx")
    _fp32_matches_onnxruntime(src, tmp_path / "scalar.tflite")
    assert edgekit.load(tmp_path / "scalar.tflite").inputs[1].shape == ()


def test_reduce_l2_normalised_embedding(tool_env, tmp_path):
    """A sentence-transformer's normalised embedding (ReduceL2): onnx2tf's tf.norm refused it; the copy given to
    onnx2tf computes Sqrt(ReduceSum(x * x)) instead."""
    src = models.save(models.l2_normalized(), tmp_path / "l2.onnx")
    x = np.random.default_rng(0).standard_normal((1, 4, 16)).astype(np.float32)
    _fp32_matches_onnxruntime(src, tmp_path / "l2.tflite", feeds={"x": x}, rtol=1e-5, atol=1e-6)  # fp32
