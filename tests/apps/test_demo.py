"""`edgekit demo` end to end on the cached EfficientNet-Lite0 bundle."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_json(vision_bundle, capsys):
    from edgekit.cli import main

    assert main(["demo", "--targets", "onnx", "--repeats", "2", "--budget-ms", "10000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bundle"] == str(vision_bundle)  # reused the cached bundle
    preds = {p["image"]: p for p in out["predictions"]}
    assert preds["chelsea"]["top"][0]["index"] in range(281, 286)
    assert preds["coffee"]["top"][0]["index"] == 967
    rows = {r["variant"]: r for r in out["variants"]}
    assert rows["onnx-fp32"]["top1_vs_fp32"] == "100%" and "onnx-int8" in rows
    assert all(r["p50_ms"] > 0 for r in rows.values())


def test_demo_text(vision_bundle, capsys):
    from edgekit.cli import main

    assert main(["demo", "--targets", "onnx", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "Egyptian cat" in text or "tabby" in text or "tiger cat" in text
    assert "espresso" in text and "onnx-int8" in text and "top1_vs_fp32" in text
