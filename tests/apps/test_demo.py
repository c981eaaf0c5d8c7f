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
    assert out["budget_rule"].startswith("budget 10000 ms: given")
    preds = {p["image"]: p for p in out["predictions"]}
    assert preds["chelsea"]["top"][0]["index"] in range(281, 286) and preds["chelsea"]["imagenet"] == "right class"
    assert preds["coffee"]["top"][0]["index"] == 967
    assert preds["hubble_deep_field"]["imagenet"].startswith("no ImageNet class")
    rows = {r["variant"]: r for r in out["variants"]}
    assert rows["onnx-fp32"]["top1_vs_fp32"] == "100%" and "onnx-int8" in rows
    assert all(r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] for r in rows.values())
    # a 10 s budget fits everything: the table's pick is the most accurate variant, and the photos ran on it
    assert out["expected_variant"] == out["variants"][0]["variant"]
    assert rows[out["expected_variant"]]["budget_pick"]
    assert {p["variant"] for p in out["predictions"]} == {out["expected_variant"]}


def test_demo_text(vision_bundle, capsys):
    from edgekit.cli import main

    assert main(["demo", "--targets", "onnx", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "Egyptian cat" in text or "tabby" in text or "tiger cat" in text
    assert "espresso" in text and "onnx-int8" in text and "top1_vs_fp32" in text
    assert "2x the fastest variant's p50 as profiled on this machine" in text  # how the budget was chosen
    assert "best variant for it by the table:" in text and "no ImageNet class for this photo" in text


def test_every_sample_photo_says_whether_imagenet_has_its_class():
    from edgekit.apps import vision

    assert set(vision.PHOTO_CLASSES) >= {"chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry",
                                         "hubble_deep_field"}
    assert vision.imagenet_verdict("coffee", 967) == "right class"
    assert vision.imagenet_verdict("coffee", 1) == "WRONG class"
    assert vision.imagenet_verdict("astronaut", 1).startswith("no ImageNet class")
