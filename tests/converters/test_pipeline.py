"""edgekit.convert end to end: every variant of the bundle runs in onnxruntime and matches the fp32 source."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import edgekit
from edgekit.errors import InputError, ModelLoadError, OutputExistsError

import models


def _cal(shape, n=24, seed=0, ints=False):
    rng = np.random.default_rng(seed)
    if ints:
        return rng.integers(0, 100, (n,) + shape[1:]).astype(np.int64)
    return rng.standard_normal((n,) + shape[1:]).astype(np.float32)


def _cos(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


#: held-out digits (never trained on) for calibration and for the tests' own checks
CAL_DIGITS = models.digits_images(models.DIGITS_TRAIN, 24)
TEST_DIGITS = models.digits_images(models.DIGITS_TRAIN + 100, 64)


def _probs(sess, xs) -> np.ndarray:
    return np.concatenate([next(iter(sess.run({"image": x[None]}).values())) for x in xs])


def _check_close(vid: str, ref: np.ndarray, got: np.ndarray, min_top1: float = 0.95) -> None:
    """Tolerances vs the fp32 source over TEST_DIGITS: fp32 1e-6, fp16 3e-3 (fp16 weights: ~5e-4 relative on
    logits of a few units, measured max 1.5e-3 on the probabilities); int8 and pruned variants agree on
    the top-1 class of >= ``min_top1`` of the digits where fp32 is decided (margin 0.2) and mean cosine >= 0.99
    (0.95 for pruned ones: they passed 0.99 on the pipeline's 6 validation digits; 0.97-0.99 measured on these 64;
    a constant output scores ~0.45).
    (A variant that ignores its input fails this: tests/converters/test_pipeline.py::test_checks_catch_*.)"""
    if vid.endswith("-fp32"):
        np.testing.assert_allclose(got, ref, atol=1e-6)
    elif vid.endswith("-fp16"):
        np.testing.assert_allclose(got, ref, atol=3e-3)
    agree, n = models.decided_top1(ref, got)
    assert n >= 40 and agree >= min_top1, (vid, agree, n)
    min_cos = 0.95 if any(t in vid for t in ("-2of4", "-ch", "-sparse")) else 0.99
    assert np.mean([_cos(r, g) for r, g in zip(ref, got)]) >= min_cos, vid


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory, digits_cnn_onnx):
    out = tmp_path_factory.mktemp("b") / "cnn"
    b = edgekit.convert(digits_cnn_onnx, out, targets="onnx", quantize=("fp32", "fp16", "int8-dynamic", "int8"),
                        prune=["2:4", "channels:0.5"], calibration={"image": CAL_DIGITS}, progress=False)
    return b, out


def test_bundle_has_every_variant_validated(cnn_bundle):
    b, out = cnn_bundle
    ids = {v.id for v in b.variants}
    for p in ("fp32", "fp16", "int8-dynamic", "int8"):
        assert {f"onnx-{p}", f"onnx-{p}-2of4", f"onnx-{p}-ch50"} <= ids
    assert not getattr(b, "failed", []), b.failed                       # no variant job failed to build
    # every unpruned precision passes; a pruned variant that failed validation really is off on held-out digits
    assert all(b.variant(f"onnx-{p}").passed for p in ("fp32", "fp16", "int8-dynamic", "int8"))
    ref = _probs(edgekit.load(out, variant="onnx-fp32"), TEST_DIGITS)
    for v in b.variants:
        if not v.passed:
            agree, _ = models.decided_top1(ref, _probs(edgekit.load(out, variant=v.id), TEST_DIGITS))
            assert agree < 0.98, (v.id, agree, v.validation)
    man = json.loads((out / "manifest.json").read_text())
    assert man["source"]["name"] == "digits_cnn.onnx" and len(man["source"]["sha256"]) == 64
    for v in man["variants"]:
        val = v["validation"]
        assert {"cosine", "max_abs", "mean_abs", "top1", "passed", "method", "n_samples"} <= set(val)
        assert val["method"] == "runtime" and val["n_samples"] == 6       # 25% of 24 held out
        assert [s["name"] for s in v["inputs"]] == ["image"] and [s["name"] for s in v["outputs"]] == ["probs"]
        assert (out / v["path"]).is_file()
    assert "| onnx-int8 |" in (out / "report.md").read_text()
    # the recipe keeps the image stem (the first Conv, on the 3-channel input) float in static int8, and says so
    stem = next(n.name for n in onnx.load(str(b.artifact(b.variant("onnx-fp32")))).graph.node if n.op_type == "Conv")
    assert b.variant("onnx-int8").validation["float_stem"] == [stem]
    q = onnx.load(str(b.artifact(b.variant("onnx-int8"))))
    floats = {i.name for i in q.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert next(n for n in q.graph.node if n.name == stem).input[1] in floats       # its weight is not dequantized
    # dynamic int8 stores Conv weights in int8 (dequantized in front of the Conv), the stem's too stays float
    assert b.variant("onnx-int8-dynamic").validation["float_stem"] == [stem]
    d = onnx.load(str(b.artifact(b.variant("onnx-int8-dynamic"))))
    d_floats = {i.name for i in d.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    convs = [n for n in d.graph.node if n.op_type == "Conv"]
    assert [n.input[1] in d_floats for n in convs] == [n.name == stem for n in convs]
    assert f"image stem ({stem})" in (out / "report.md").read_text()
    assert not list(out.parent.glob(".cnn.tmp-*"))


def test_every_variant_runs_and_matches_fp32(cnn_bundle, digits_cnn_onnx):
    b, out = cnn_bundle
    ref = np.concatenate([models.ort_reference(digits_cnn_onnx, {"image": x[None]})["probs"] for x in TEST_DIGITS])
    sizes = {v.id: v.size for v in b.variants}
    for v in b.variants:
        if v.passed:        # the ones that failed validation are checked to be really off in the test above
            _check_close(v.id, ref, _probs(edgekit.load(out, variant=v.id), TEST_DIGITS))
    assert sizes["onnx-fp16"] < 0.7 * sizes["onnx-fp32"]
    assert sizes["onnx-fp32-ch50"] < sizes["onnx-fp32"]


def test_checks_catch_a_variant_that_ignores_its_input(digits_cnn_onnx):
    """The checks above fail a variant whose output is constant (fp32's output on the mean digit) or belongs to
    another input: the model's outputs depend on their inputs, so cosine and top-1 tell them apart."""
    ref = np.concatenate([models.ort_reference(digits_cnn_onnx, {"image": x[None]})["probs"] for x in TEST_DIGITS])
    const = models.ort_reference(digits_cnn_onnx, {"image": TEST_DIGITS.mean(0, keepdims=True)})["probs"]
    for wrong in (np.repeat(const, len(ref), axis=0), np.roll(ref, 1, axis=0)):
        for vid in ("onnx-int8", "onnx-fp32-2of4"):
            with pytest.raises(AssertionError):
                _check_close(vid, ref, wrong)
        assert models.decided_top1(ref, wrong)[0] < 0.5


def test_load_picks_a_passing_variant(cnn_bundle):
    b, out = cnn_bundle
    sess = edgekit.load(out)
    assert b.variant(sess.variant).passed


def test_bert_block_int8_and_fp16(tmp_path, bert_onnx):
    ids = _cal((1, 8), n=20, ints=True)
    b = edgekit.convert(bert_onnx, tmp_path / "bert", targets=["onnx"], quantize="fp32,fp16,int8-dynamic,int8",
                        calibration={"input_ids": ids}, progress=False)
    x = {"input_ids": np.arange(8, dtype=np.int64).reshape(1, 8) * 7}
    ref = models.ort_reference(bert_onnx, x)["hidden"]
    for v in b.variants:
        assert v.validation["top1"] is None          # not a classifier: cosine and errors only
        got = edgekit.load(tmp_path / "bert", variant=v.id).run(x)["hidden"]
        assert _cos(ref, got) >= (0.999 if v.precision in ("fp32", "fp16") else 0.98), v.id


def _weight_reads(model: onnx.ModelProto, names) -> dict[str, str]:
    """{node name: "float" | "int8"} for the nodes in ``names`` that read a weight (a 2-D+ initializer): "float"
    when they read it directly, "int8" when through a DequantizeLinear of a quantized initializer."""
    inits = {i.name: i for i in model.graph.initializer}
    deq = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in model.graph.node:
        if n.name not in names:
            continue
        for i in n.input:
            if i in inits and len(inits[i].dims) >= 2 and inits[i].data_type == onnx.TensorProto.FLOAT:
                out[n.name] = "float"
            elif deq.get(i) in inits and len(inits[deq[i]].dims) >= 2:
                out[n.name] = "int8"
    return out


def test_accuracy_aware_retry_keeps_nodes_in_float(tmp_path, bert_onnx):
    cal = {"input_ids": _cal((1, 8), ints=True)}
    plain_b = edgekit.convert(bert_onnx, tmp_path / "plain", targets="onnx", quantize=["fp32", "int8"],
                              calibration=cal, accuracy_aware=False, progress=False)
    plain = plain_b.variant("onnx-int8").validation["cosine"]
    # a threshold just above what plain int8 reaches forces the retry; nodes kept in float make it pass
    threshold = plain + 0.1 * (1 - plain)
    b = edgekit.convert(bert_onnx, tmp_path / "strict", targets="onnx", quantize=["fp32", "int8"], calibration=cal,
                        cosine_threshold=threshold, progress=False)
    v = b.variant("onnx-int8")
    kept = v.validation.get("kept_float")
    assert kept and v.validation["passed"] and v.validation["cosine"] >= threshold, v.validation
    assert "kept in float" in (tmp_path / "strict" / "report.md").read_text()
    # the kept nodes that carry weights read them as float initializers in the artifact; in the plain int8
    # artifact the same nodes read int8 weights through DequantizeLinear
    kept_reads = _weight_reads(onnx.load(str(b.artifact(v))), kept)
    assert kept_reads and set(kept_reads.values()) == {"float"}, kept_reads
    plain_reads = _weight_reads(onnx.load(str(plain_b.artifact(plain_b.variant("onnx-int8")))), kept)
    assert set(plain_reads.values()) == {"int8"} and set(plain_reads) == set(kept_reads), plain_reads


def test_failed_retry_keeps_the_plain_variant(tmp_path, cnn_onnx):
    # a threshold no retry reaches: the plain int8 build is kept (not the last, larger attempt) and it is said
    cal = {"image": _cal((1, 3, 16, 16))}
    plain = edgekit.convert(cnn_onnx, tmp_path / "plain", targets="onnx", quantize=["fp32", "int8"], calibration=cal,
                            accuracy_aware=False, progress=False)
    b = edgekit.convert(cnn_onnx, tmp_path / "strict", targets="onnx", quantize=["fp32", "int8"], calibration=cal,
                        cosine_threshold=0.9999999, progress=False)
    v, p = b.variant("onnx-int8"), plain.variant("onnx-int8")
    assert not v.validation["passed"] and v.validation.get("retry_failed")
    assert v.sha256 == p.sha256 and v.validation["cosine"] == p.validation["cosine"]
    assert "retry failed" in (tmp_path / "strict" / "report.md").read_text()


def _sparsity(model: onnx.ModelProto) -> dict[str, float]:
    """{Conv/Gemm node name: fraction of exact zeros in its weight initializer}."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: float((inits[n.input[1]] == 0).mean()) for n in model.graph.node
            if n.op_type in ("Conv", "Gemm") and n.input[1] in inits}


def test_pruning_retry_records_unpruned_layers(tmp_path, digits_cnn_onnx):
    """Without the retry every layer is 90% zeros; with a strict threshold the layers the retry kept are dense,
    the others still 90% zeros: the record says what the artifact holds."""
    cal = {"image": CAL_DIGITS}
    plain = edgekit.convert(digits_cnn_onnx, tmp_path / "plain", targets="onnx", quantize="fp32", prune="0.9",
                            calibration=cal, accuracy_aware=False, progress=False)
    v = plain.variant("onnx-fp32-sparse90")
    sp = _sparsity(onnx.load(str(plain.artifact(v))))
    assert len(sp) == 3 and min(sp.values()) >= 0.85, sp            # 90% of each weight, rounded per group
    b = edgekit.convert(digits_cnn_onnx, tmp_path / "p", targets="onnx", quantize="fp32", prune="0.9",
                        calibration=cal, cosine_threshold=0.995, progress=False)
    v = b.variant("onnx-fp32-sparse90")
    assert v.pruning == "0.9"
    kept = set(v.validation.get("kept_unpruned") or [])
    sp = _sparsity(onnx.load(str(b.artifact(v))))
    assert kept <= set(sp), (kept, sp)
    for name, zeros in sp.items():
        assert (zeros == 0.0) if name in kept else (zeros >= 0.85), (name, zeros, kept)


def test_channel_pruning_refits_on_calibration_data(tmp_path, cnn_onnx):
    """With calibration data the layer after a pruned channel group is re-fitted (here the classifier Gemm after
    Conv_2's group; Conv_2 after Conv_0's is 3x3, so it is only cut) and the manifest records it."""
    b = edgekit.convert(cnn_onnx, tmp_path / "p", targets="onnx", quantize="fp32", prune="channels:0.5",
                        calibration={"image": _cal((1, 3, 16, 16))}, accuracy_aware=False, progress=False)
    v = b.variant("onnx-fp32-ch50")
    gemm = next(n.name for n in onnx.load(str(b.artifact(v))).graph.node if n.op_type == "Gemm")
    assert v.validation["refit"] == [gemm]
    before, after = v.validation["params"]
    assert after < before
    x = _cal((1, 3, 16, 16), n=1)
    out = edgekit.load(tmp_path / "p", variant=v.id).run({"image": x})["probs"]
    assert out.shape == (1, 10) and abs(float(out.sum()) - 1) < 1e-5

def test_no_refit_when_validation_reuses_calibration(tmp_path, cnn_onnx):
    """With 3 calibration samples validation reuses them: pruning must not fit layers on the data it is judged on."""
    b = edgekit.convert(cnn_onnx, tmp_path / "p", targets="onnx", quantize="fp32", prune="channels:0.5",
                        calibration={"image": _cal((1, 3, 16, 16), n=3)}, accuracy_aware=False, progress=False)
    assert b.variant("onnx-fp32-ch50").validation["refit"] == []
    assert "not re-fitted" in (tmp_path / "p" / "report.md").read_text()

def test_torch_module_source(tmp_path):
    torch = pytest.importorskip("torch", reason="torch extra not installed")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, image):
            return self.fc(torch.relu(self.conv(image)).mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(1, 3, 12, 12)
    b = edgekit.convert(net, tmp_path / "t", example_inputs=(x,), targets="onnx", quantize=("fp32", "fp16"),
                        progress=False)
    assert [s.name for s in b.variants[0].inputs] == ["image"]
    with torch.no_grad():
        want = net(x).numpy()
    got = edgekit.load(tmp_path / "t", variant="onnx-fp32").run({"image": x.numpy()})
    np.testing.assert_allclose(next(iter(got.values())), want, atol=1e-5)   # ORT vs torch fp32


def test_torch_source_falls_back_to_ct_convert(tmp_path):
    """CumSum is not in the ONNX->MIL translator's table: for a PyTorch source the Core ML variants come from
    ct.convert on the module instead (not a TVM composite), keep the ONNX source's names, and are validated
    against the ONNX fp32 reference like any other variant (graph check on Linux)."""
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    pytest.importorskip("coremltools", reason="coreml extra not installed")
    from edgekit.converters import mil_eval

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x):
            return torch.cumsum(self.fc(x), dim=1)

    torch.manual_seed(0)
    b = edgekit.convert(Net().eval(), tmp_path / "t", example_inputs=(torch.randn(1, 8),), targets="coreml",
                        quantize=("fp32", "fp16"), progress=False)
    assert [v.id for v in b.variants] == ["coreml-fp32", "coreml-fp16"]
    for v in b.variants:
        assert v.validation["exported_from"] == "torch (ct.convert)" and v.validation["passed"]
        assert v.validation["method"] == "graph-check" and v.validation["max_abs"] < (1e-5 if v.precision == "fp32"
                                                                                       else 1e-2)
        meta = mil_eval.io_metadata(mil_eval.load_program(b.artifact(v))[1])
        assert list(meta["inputs"]) == ["x"] and list(meta["outputs"]) == ["output"]
    assert "exported from the PyTorch module with ct.convert" in (tmp_path / "t" / "report.md").read_text()

def test_torch_source_needs_example_inputs(tmp_path):
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    with pytest.raises(InputError, match="example_inputs"):
        edgekit.convert(torch.nn.Linear(3, 2), tmp_path / "t", targets="onnx", progress=False)


def test_bad_inputs_leave_no_bundle(tmp_path, cnn_onnx):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="--calibration"):
        edgekit.convert(cnn_onnx, out, targets="onnx", quantize="int8", progress=False)
    with pytest.raises(InputError, match="--prune"):
        edgekit.convert(cnn_onnx, out, targets="onnx", prune="2:x", progress=False)
    with pytest.raises(InputError, match="unknown export format"):
        edgekit.convert(cnn_onnx, out, targets="onnx,caffe", progress=False)
    with pytest.raises(InputError, match="image"):      # calibration of the wrong shape, found mid-way
        edgekit.convert(cnn_onnx, out, targets="onnx", calibration={"image": np.zeros((4, 3, 8, 8), np.float32)},
                        progress=False)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08garbage")
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        edgekit.convert(bad, out, targets="onnx", progress=False)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.onnx"]     # no temporary half bundle either


def test_existing_output_needs_force(tmp_path, mlp_onnx):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="--force"):
        edgekit.convert(mlp_onnx, out, targets="onnx", quantize="fp32", progress=False)
    assert (out / "keep.txt").read_text() == "user data"
    b = edgekit.convert(mlp_onnx, out, targets="onnx", quantize="fp32", force=True, progress=False)
    assert not (out / "keep.txt").exists() and [v.id for v in b.variants] == ["onnx-fp32"]


def test_default_quantize_without_calibration_builds_dynamic(tmp_path, mlp_onnx):
    b = edgekit.convert(mlp_onnx, tmp_path / "o", targets="onnx", progress=False)
    assert [v.id for v in b.variants] == ["onnx-fp32", "onnx-fp16", "onnx-int8-dynamic"]
    assert "no calibration data" in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.slow
def test_all_available_formats(tmp_path, digits_cnn_onnx):
    """Default targets: every exporter usable here; each variant validated in its runtime (or graph-checked)."""
    from edgekit.converters import exporters

    usable = [f for f, e in exporters().items() if e.unavailable_reason() is None]
    if usable == ["onnx"]:
        pytest.skip("no TFLite or Core ML exporter usable here (pip install 'edgekit-sdk[tflite,coreml]')")
    b = edgekit.convert(digits_cnn_onnx, tmp_path / "all", quantize=("fp32", "int8"),
                        calibration={"image": CAL_DIGITS}, progress=False)
    fmts = {v.format for v in b.variants}
    assert fmts == set(usable), (fmts, usable, (tmp_path / "all" / "report.md").read_text())
    ref = np.concatenate([models.ort_reference(digits_cnn_onnx, {"image": x[None]})["probs"] for x in TEST_DIGITS])
    for v in b.variants:
        assert v.validation["method"] in ("runtime", "graph-check") and v.validation["n_samples"] == 6
        assert v.passed and v.validation["top1"] >= 0.98, v.id       # the pipeline's own check, recorded
        if v.validation["method"] == "runtime":
            _check_close(v.id, ref, _probs(b.load(v.id), TEST_DIGITS))   # tolerances: see _check_close


def test_separate_validation_data_is_what_variants_are_checked_on(tmp_path, cnn_onnx):
    """validation=: every variant is judged on exactly those inputs (all calibration samples calibrate)."""
    val = _cal((1, 3, 16, 16), n=10, seed=7)
    b = edgekit.convert(cnn_onnx, tmp_path / "v", targets="onnx", quantize=("fp32", "int8"),
                        calibration={"image": _cal((1, 3, 16, 16))}, validation={"image": val}, progress=False)
    q = b.variant("onnx-int8")
    assert q.validation["n_samples"] == 10
    ref = [models.ort_reference(cnn_onnx, {"image": val[i:i + 1]})["probs"].ravel() for i in range(10)]
    sess = b.load("onnx-int8")
    got = [sess.run({"image": val[i:i + 1]})["probs"].ravel() for i in range(10)]
    # the recorded mean cosine is the one on these 10 inputs (tolerance: float rounding of the mean)
    assert abs(np.mean([_cos(r, g) for r, g in zip(ref, got)]) - q.validation["cosine"]) < 1e-5
    assert "10 validation samples given" in (tmp_path / "v" / "report.md").read_text()


def test_bad_validation_data_names_the_flag(tmp_path, cnn_onnx):
    with pytest.raises(edgekit.InputError, match="--validation"):
        edgekit.convert(cnn_onnx, tmp_path / "v", targets="onnx", quantize="fp32",
                        validation=tmp_path / "missing.npz", progress=False)
    with pytest.raises(edgekit.InputError, match="no array for input 'image'"):
        edgekit.convert(cnn_onnx, tmp_path / "v", targets="onnx", quantize="fp32",
                        validation={"x": _cal((1, 3, 16, 16))}, progress=False)
    assert not (tmp_path / "v").exists()


def test_preprocess_spec_is_checked_and_recorded(tmp_path, cnn_onnx):
    b = edgekit.convert(cnn_onnx, tmp_path / "p", targets="onnx", quantize="fp32", progress=False,
                        preprocess="size=16,mean=0.5/0.5/0.5,std=0.25/0.25/0.25,layout=NCHW")
    pre = b.manifest["preprocess"]
    assert pre["size"] == [16, 16] and pre["mean"] == [0.5] * 3 and pre["std"] == [0.25] * 3
    assert pre["layout"] == "NCHW"
    with pytest.raises(edgekit.InputError, match="preprocess spec"):
        edgekit.convert(cnn_onnx, tmp_path / "q", targets="onnx", quantize="fp32", progress=False,
                        preprocess="size=16,colour=bgr")
    assert not (tmp_path / "q").exists()


def test_failure_does_not_wait_for_the_background_tflite_export(tmp_path, cnn_onnx):
    """The TFLite export (onnx2tf subprocess) starts at once beside the ONNX work; when the ONNX work fails, the
    export is killed and the error comes back without waiting for it; no bundle is left."""
    import time

    from edgekit.converters import exporters, toolenv

    exp = exporters().get("tflite")
    if exp is None or exp.unavailable_reason():
        pytest.skip("no TFLite exporter usable here")
    t0 = time.perf_counter()
    with pytest.raises(edgekit.InputError, match="unknown option"):
        edgekit.convert(cnn_onnx, tmp_path / "x", targets=["onnx", "tflite"], quantize=("fp32", "fp16"),
                        exporter_options={"onnx": {"bogus": 1}}, progress=False)
    # waiting for the export would take TF's start-up in the tool process at least (~4 s warm, 12 s cold here)
    assert time.perf_counter() - t0 < 3.0
    assert not toolenv._RUNNING and not toolenv._CANCELLED and not (tmp_path / "x").exists()
