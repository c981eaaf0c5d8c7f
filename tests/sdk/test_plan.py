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


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return budget_fixtures.mlp_bundle(tmp_path_factory.mktemp("plan") / "mlp.bundle", hidden=1024)


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
    rep = plan(bundle, "rpi4", 1e6, cache_dir=tmp_path)
    assert rep["estimate"] is True and "estimate" in rep["note"]
    rows = {r["id"]: r for r in rep["variants"]}
    assert rep["chosen"] == "fp32" and rep["meets_budget"]
    for r in rows.values():
        assert r["calibrated"] and r["host_p50_ms"] > 0 and r["est_p50_ms"] > 0
        # a Pi 4 has lower peaks than any x86 host profile: every estimate is slower than the host figure
        assert r["est_p50_ms"] > r["host_p50_ms"]
    # a budget between the two estimates picks the cheaper variant; the host figures come from the cache
    mid = (rows["fp32"]["est_tail_ms"] + rows["pruned"]["est_tail_ms"]) / 2
    assert rows["pruned"]["est_tail_ms"] < rows["fp32"]["est_tail_ms"]
    rep2 = plan(bundle, "rpi4", mid, cache_dir=tmp_path)
    assert rep2["chosen"] == "pruned" and rep2["meets_budget"]
    assert {r["id"]: r["host_p50_ms"] for r in rep2["variants"]} == {k: r["host_p50_ms"] for k, r in rows.items()}
    rep3 = plan(bundle, "rpi4", 1e-6, cache_dir=tmp_path)
    assert rep3["chosen"] == "pruned" and not rep3["meets_budget"]
    # a faster board: smaller estimates for the same host measurements
    fast = {r["id"]: r for r in plan(bundle, "rpi5", 1e6, cache_dir=tmp_path)["variants"]}
    assert all(fast[k]["est_p50_ms"] < rows[k]["est_p50_ms"] for k in rows)


def test_plan_errors(bundle, tmp_path):
    with pytest.raises(BoardError, match="unknown board"):
        plan(bundle, "pi-zero-9000", 10, cache_dir=tmp_path)
    with pytest.raises(InputError, match="budget"):
        plan(bundle, "rpi4", 0, cache_dir=tmp_path)
    with pytest.raises(InputError, match="threads"):
        plan(bundle, "rpi4", 10, threads=0, cache_dir=tmp_path)


def test_plan_cli(bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    assert main(["plan", str(bundle), "--board", "rpi4", "--budget-ms", "1000"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATES" in out and "would run: fp32" in out
    assert main(["plan", str(bundle), "--board", "rpi4", "--budget-ms", "1000", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["board"] == "rpi4" and rep["chosen"] == "fp32"
    assert main(["plan", str(bundle), "--board", "nope", "--budget-ms", "10"]) == 2
    err = capsys.readouterr().err
    assert "unknown board" in err and err.count("\n") == 1
