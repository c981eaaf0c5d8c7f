"""The smallest zoo model end to end: magika's file-type classifier (from the magika wheel) through the public API.

Converted to ONNX fp32, fp16 and dynamic int8 on real file bytes (calibration and validation from different files),
then every variant is loaded with ``edgekit.load`` and checked here against ONNX Runtime on the source file: the
manifest's verdict must agree with what the variant really computes. Plus the small bugs the zoo found.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import edgekit

import models

ZOO = Path(__file__).resolve().parents[2] / "benchmarks" / "zoo.py"


@pytest.fixture(scope="module")
def zoo():
    pytest.importorskip("magika", reason="the zoo extra is not installed (pip install 'edgekit[zoo]')")
    spec = importlib.util.spec_from_file_location("edgekit_zoo_bench", ZOO)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_magika_converts_and_validates_truthfully(zoo, tmp_path):
    model = zoo.BY_NAME["magika_v3_3"]
    src = model.source()
    calib, valid = model.data("calib"), model.data("valid")
    feeds = zoo.feeds_of(valid, {"bytes": 2})
    names, ref = zoo.reference(model, src, feeds)
    ref_top = [int(r[0].argmax()) for r in ref]
    assert len(set(ref_top)) >= 3, "the validation files should span several file types"

    bundle = edgekit.convert(src, tmp_path / "magika.bundle", targets=["onnx"],
                             quantize=["fp32", "fp16", "int8-dynamic"], calibration=calib, validation=valid,
                             progress=False)
    assert {v.id for v in bundle.variants} == {"onnx-fp32", "onnx-fp16", "onnx-int8-dynamic"}
    assert not bundle.manifest.get("failed")
    for v in bundle.variants:
        sess = edgekit.load(tmp_path / "magika.bundle", variant=v.id)
        got = [sess.run(f)[names[0]] for f in feeds]
        top1 = np.mean([int(g.argmax()) == t for g, t in zip(got, ref_top)])
        cos = zoo._cos_here(ref, [[g] for g in got])
        assert v.passed, (v.id, v.validation.get("decided_by"))
        # measured: fp32 and fp16 agree on every file, dynamic int8 cosine 0.99999; the bar is the manifest's own
        assert top1 == 1.0 and cos >= 0.99, (v.id, top1, cos)
        # the manifest's figures are the variant's real ones (not an average that hides an output)
        assert abs(v.validation["cosine"] - cos) < 1e-3, (v.id, v.validation["cosine"], cos)


def test_rank0_input_converts_and_validates(tmp_path):
    """silero-vad's ``sr`` is a rank-0 int64 input: an [N] validation array gives one 0-d array per sample (a numpy
    scalar made ONNX Runtime refuse the source: 'Unable to handle object of type numpy.int64')."""
    path = models.save(models.scalar_input(), tmp_path / "scalar.onnx")
    x = np.random.default_rng(0).normal(size=(6, 1, 4)).astype(np.float32)
    sr = np.array([16000, 8000, 16000, 8000, 16000, 8000], np.int64)
    bundle = edgekit.convert(path, tmp_path / "b", targets=["onnx"], quantize=["fp32"],
                             validation={"x": x, "sr": sr}, progress=False)
    assert bundle.variant("onnx-fp32").passed
    sess = edgekit.load(tmp_path / "b")
    want = models.ort_reference(path, {"x": x[1], "sr": np.array(8000, np.int64)})["y"]
    got = sess.run({"x": x[1], "sr": np.array(8000, np.int64)})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)  # the same ONNX graph in the same runtime
