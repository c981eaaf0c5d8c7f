"""Latency planning for a board: graph costs, roofline scaling of host measurements, the pick, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import budget_fixtures  # noqa: E402

from edgekit import boards  # noqa: E402
from edgekit.cli import main  # noqa: E402
from edgekit.errors import BoardError, InputError  # noqa: E402
from edgekit.graph_cost import graph_cost  # noqa: E402
from edgekit.plan import plan, roofline_ms  # noqa: E402

import models  # noqa: E402

X = {"x": (1, 256)}  # the MLP bundle's input has a dynamic batch: estimates are for one row
P50 = "p50_ms"  # the pick compares medians: a p95 of 20 us runs is noise on a shared 2-core machine


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return budget_fixtures.mlp_bundle(tmp_path_factory.mktemp("plan") / "mlp.bundle", hidden=4096)


def test_graph_cost_of_an_mlp(tmp_path):
    path = models.save(models.mlp(), tmp_path / "mlp.onnx")  # x[N,16] -> 32 -> 10, N set to 1
    c = graph_cost(path)
    # MatMul 2*16*32 + Add 32 + Relu 32 + MatMul 2*32*10 + Add 10: exact counts
    assert c["flops"] == 1024 + 32 + 32 + 640 + 10 and c["int8_ops"] == 0 and c["unknown_nodes"] == 0
    # weights (16*32 + 32 + 32*10 + 10) fp32, four activations written+read, input and output once
    assert c["weight_bytes"] == 874 * 4
    assert c["bytes"] == 874 * 4 + 2 * (32 + 32 + 32 + 10) * 4 + (16 + 10) * 4


def test_graph_cost_of_a_cnn_and_an_int8_model(tmp_path):
    path = models.save(models.cnn(), tmp_path / "cnn.onnx")
    c = graph_cost(path)
    conv1 = 2 * 8 * 16 * 16 * 3 * 3 * 3  # out[1,8,16,16], kernel 3x3x3
    conv2 = 2 * 16 * 8 * 8 * 8 * 3 * 3  # stride 2: out[1,16,8,8], kernel 8x3x3
    assert conv1 + conv2 < c["flops"] < conv1 + conv2 + 10_000  # + elementwise, pool, gemm
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = models.save(models.mlp(d_in=64, d_hidden=256), tmp_path / "wide.onnx")
    q = tmp_path / "wide-int8.onnx"
    quantize_dynamic(str(src), str(q), weight_type=QuantType.QInt8)
    cf, cq = graph_cost(src), graph_cost(q)
    assert cq["int8_ops"] == 2 * 64 * 256 + 2 * 256 * 10  # both MatMuls became MatMulInteger
    assert cq["flops"] < cf["flops"] / 10 and cq["weight_bytes"] < cf["weight_bytes"] / 3


def test_roofline_scales_with_board_figures():
    cost = {"flops": 2e9, "int8_ops": 0, "bytes": 1e6}  # compute-bound
    rpi4, rpi5 = boards.get_profile("rpi4"), boards.get_profile("rpi5")
    assert roofline_ms(cost, rpi4, threads=None) == pytest.approx(2e9 / 48e9 * 1e3)
    assert roofline_ms(cost, rpi4, threads=1) == pytest.approx(4 * roofline_ms(cost, rpi4, threads=None))
    assert roofline_ms(cost, rpi4) / roofline_ms(cost, rpi5) == pytest.approx(153.6 / 48.0)
    mem = {"flops": 1.0, "int8_ops": 0, "bytes": 12.8e9}  # memory-bound: one second on a Pi 4
    assert roofline_ms(mem, rpi4) == pytest.approx(1000.0)


def test_plan_picks_by_budget_and_labels_estimates(bundle, tmp_path):
    rep = plan(bundle, "rpi4", 1e6, cache_dir=tmp_path, input_shapes=X, quantile_key=P50)
    assert rep["estimate"] is True and "estimate" in rep["note"]
    rows = {r["id"]: r for r in rep["variants"]}
    assert rep["chosen"] == "fp32" and rep["meets_budget"]
    for r in rows.values():
        assert r["calibrated"] and r["host_p50_ms"] > 0 and r["est_p50_ms"] > 0
        assert r["shape"] == "x=1x256" and r["shape_from"] == "--input-shape" and r["cost_from"] == r["id"]
        assert r["host_from"] == "measured now"
        # a Pi 4 has lower peaks than any x86 host profile: every estimate is slower than the host figure
        assert r["est_p50_ms"] > r["host_p50_ms"]
    # a budget between the two estimates picks the cheaper variant
    mid = (rows["fp32"]["est_tail_ms"] + rows["pruned"]["est_tail_ms"]) / 2
    assert rows["pruned"]["est_tail_ms"] < rows["fp32"]["est_tail_ms"]
    rep2 = plan(bundle, "rpi4", mid, cache_dir=tmp_path, input_shapes=X, quantile_key=P50)
    assert rep2["chosen"] == "pruned" and rep2["meets_budget"]
    for r in rep2["variants"]:  # stable host figures come from the cached profile (unstable ones are re-measured)
        if rows[r["id"]]["host_stable"]:
            assert r["host_from"] == "cached profile" and r["host_p50_ms"] == rows[r["id"]]["host_p50_ms"]
    rep3 = plan(bundle, "rpi4", 1e-6, cache_dir=tmp_path, input_shapes=X, quantile_key=P50)
    assert rep3["chosen"] == "pruned" and not rep3["meets_budget"]
    # a faster board: smaller estimates for the same host measurements (rpi5's peaks are 3.2x rpi4's); compared per
    # host millisecond, since an unstable host figure is measured again between the two plans
    fast = {r["id"]: r for r in plan(bundle, "rpi5", 1e6, cache_dir=tmp_path, input_shapes=X)["variants"]}
    assert all(fast[k]["est_p50_ms"] / fast[k]["host_p50_ms"] < rows[k]["est_p50_ms"] / rows[k]["host_p50_ms"]
               for k in rows)


def test_plan_errors(bundle, tmp_path):
    with pytest.raises(BoardError, match="unknown board"):
        plan(bundle, "pi-zero-9000", 10, cache_dir=tmp_path)
    with pytest.raises(InputError, match="budget"):
        plan(bundle, "rpi4", 0, cache_dir=tmp_path)
    with pytest.raises(InputError, match="threads"):
        plan(bundle, "rpi4", 10, threads=0, cache_dir=tmp_path, input_shapes=X)
    with pytest.raises(InputError, match=r"dynamic dims \['N', 256\].*--input-shape x=N,256"):
        plan(bundle, "rpi4", 10, cache_dir=tmp_path)  # never costed at a guessed dim of 1
    with pytest.raises(InputError, match="no input y"):
        plan(bundle, "rpi4", 10, cache_dir=tmp_path, input_shapes=["y=1,2"])
    with pytest.raises(InputError, match="does not fit"):
        plan(bundle, "rpi4", 10, cache_dir=tmp_path, input_shapes={"x": (1, 255)})


def test_plan_cli(bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    assert main(["plan", str(bundle), "--board", "rpi4", "--budget-ms", "1000", "--input-shape", "x=1,256"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATES" in out and "would run: fp32" in out
    header = next(line for line in out.splitlines() if line.startswith("variant "))
    for label in ("input shape", "cost of", "GFLOP", "traffic MB", "host p50 ms", "est p50 ms", "est p95 ms"):
        assert label in header
    assert " MB " not in header.replace("traffic MB", "")  # no unlabelled MB column
    assert "x=1x256" in out and "traffic MB: weights + activations" in out
    assert main(["plan", str(bundle), "--board", "rpi4", "--budget-ms", "1000", "--json", "--input-shape",
                 "x=1,256"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["board"] == "rpi4" and rep["chosen"] == "fp32"
    assert main(["plan", str(bundle), "--board", "nope", "--budget-ms", "10"]) == 2
    err = capsys.readouterr().err
    assert "unknown board" in err and err.count("\n") == 1


def _bundle(out: Path, variants: dict, src: Path, meta: dict | None = None) -> Path:
    """A bundle of ``{id: (format, artifact)}``, all fp32 and passed, with ``src``'s input/output specs."""
    import edgekit
    from edgekit.bundle_writer import BundleWriter

    with edgekit.load(src) as s:
        ins, outs = s.inputs, s.outputs
    with BundleWriter(out, force=True, inputs=ins, outputs=outs, meta=meta) as w:
        for vid, (fmt, art) in variants.items():
            w.add_variant(vid, fmt, "fp32", art, ins, outs, validation={"passed": True, "cosine": 1.0})
    return out


@pytest.fixture(scope="module")
def seq_bundle(tmp_path_factory) -> Path:
    """A BERT-like block with a dynamic sequence length, validated (manifest) at input_ids [1, 64]."""
    d = tmp_path_factory.mktemp("seq")
    src = models.save(models.bert_block(seq="seq", hidden=128), d / "bert.onnx")
    return _bundle(d / "bert.bundle", {"onnx-fp32": ("onnx", src)}, src,
                   meta={"validated_shapes": {"input_ids": [1, 64]}})


def test_graph_cost_at_the_given_shape(tmp_path):
    path = models.save(models.bert_block(seq="seq", hidden=32), tmp_path / "bert.onnx")
    c1, c128 = graph_cost(path, {"input_ids": (1, 1)}), graph_cost(path, {"input_ids": (1, 128)})
    # per token: Q, K, V, O (4 x 2*32*32) + MLP (2 x 2*32*64) MatMuls; attention adds 2 x 2*seq*32 per token
    assert c1["flops"] >= 4 * 2 * 32 * 32 + 2 * 2 * 32 * 64
    assert c128["flops"] > 128 * (4 * 2 * 32 * 32 + 2 * 2 * 32 * 64 + 2 * 2 * 128 * 32)
    assert c128["flops"] / c1["flops"] > 128 and c128["weight_bytes"] == c1["weight_bytes"]
    with pytest.raises(InputError, match="has 2 dims"):
        graph_cost(path, {"input_ids": (128,)})


def test_plan_estimates_at_the_sequence_length_asked(seq_bundle, tmp_path):
    """Does the block at sequence length 128 fit? Estimated at 128, not at a one-token sentence."""
    rep = plan(seq_bundle, "rpi4", 150, cache_dir=tmp_path)
    row = rep["variants"][0]
    assert row["shape"] == "input_ids=1x64" and row["shape_from"] == "validated"  # the manifest's shape
    at = {n: plan(seq_bundle, "rpi4", 150, cache_dir=tmp_path, input_shapes=[f"input_ids=1,{n}"])["variants"][0]
          for n in (1, 128)}
    assert at[128]["shape"] == "input_ids=1x128" and at[128]["shape_from"] == "--input-shape"
    assert at[128]["gflops"] > 100 * at[1]["gflops"]
    # measured here at each length (a 1-token run is mostly call overhead) and scaled: still a large factor
    assert at[128]["host_p50_ms"] > 4 * at[1]["host_p50_ms"]
    assert at[128]["est_p50_ms"] > 8 * at[1]["est_p50_ms"]
    assert 1 < at[128]["est_p50_ms"] / row["est_p50_ms"] < 4  # 128 vs 64 tokens


def test_plan_cli_prints_the_shape(seq_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    assert main(["plan", str(seq_bundle), "--board", "rpi4", "--budget-ms", "150",
                 "--input-shape", "input_ids=1,128"]) == 0
    out = capsys.readouterr().out
    assert "input_ids=1x128" in out and "would run: onnx-fp32" in out
    assert main(["plan", str(seq_bundle), "--board", "rpi4", "--budget-ms", "150", "--input-shape", "ids"]) == 2
    assert "NAME=D0,D1" in capsys.readouterr().err


@pytest.mark.slow
def test_plan_tflite_coreml_and_composite_variants(tflite_mlp, tmp_path, cross_cc):
    """Non-ONNX variants are costed on their source ONNX graph and scaled by their own runtime's latency here."""
    pytest.importorskip("coremltools")
    pytest.importorskip("tvm")
    from edgekit.converters import get_exporter
    from edgekit.converters.composite import build_composite

    tfl, src = tflite_mlp
    ml = get_exporter("coreml").export(src, tmp_path / "m.mlpackage", "fp32")
    comp = build_composite(src, tmp_path / "comp", "onnx", fallback_ops=["Tanh"], boards=["host", "rpi4"]).parent
    b = _bundle(tmp_path / "b.bundle", {"onnx-fp32": ("onnx", src), "tflite-fp32": ("tflite", tfl),
                                        "coreml-fp32": ("coreml", ml), "onnx-fp32+tvm": ("composite", comp)}, src)
    rows = {r["id"]: r for r in plan(b, "rpi4", 100, cache_dir=tmp_path)["variants"]}
    onnx_row = rows["onnx-fp32"]
    for vid in ("tflite-fp32", "onnx-fp32+tvm"):
        r = rows[vid]
        assert r["cost_from"] == "onnx-fp32" and r["gflops"] == onnx_row["gflops"] and r["shape"] == onnx_row["shape"]
        assert r["calibrated"] and r["host_from"] == "measured now"
        scale = r["board_roofline_ms"] / r["host_roofline_ms"]
        assert r["est_p50_ms"] == pytest.approx(r["host_p50_ms"] * scale)  # its own runtime's latency, scaled
    assert "not among rpi4's runtimes" in rows["coreml-fp32"]["skipped"]
    m1 = {r["id"]: r for r in plan(b, "apple-m1", 100, cache_dir=tmp_path)["variants"]}
    assert m1["coreml-fp32"]["est_p50_ms"] > 0 and not m1["coreml-fp32"]["calibrated"]  # Core ML cannot run here
    assert "median efficiency" in m1["coreml-fp32"]["host_from"] and m1["coreml-fp32"]["cost_from"] == "onnx-fp32"
    assert "not apple-m1" in m1["onnx-fp32+tvm"]["skipped"]
