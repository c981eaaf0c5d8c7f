"""The ONNX exporter writes atomically and never overwrites without force."""

from __future__ import annotations

import numpy as np
import pytest

import edgekit
from edgekit.converters import get_exporter
from edgekit.errors import InputError, OutputExistsError

from models import ort_reference


def test_export_is_atomic_and_refuses_to_overwrite(tmp_path, mlp_onnx):
    exp = get_exporter("onnx")
    out = exp.export(mlp_onnx, tmp_path / "m.onnx", "fp16")
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    ref = ort_reference(mlp_onnx, {"x": x})["logits"]
    np.testing.assert_allclose(edgekit.load(out).run({"x": x})["logits"], ref, rtol=2e-2, atol=2e-2)  # fp16
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match="force"):
        exp.export(mlp_onnx, out, "int8-dynamic")
    assert out.read_bytes() == before
    with pytest.raises(InputError, match="unknown option"):
        exp.export(mlp_onnx, tmp_path / "x.onnx", "fp32", colour="blue")
    exp.export(mlp_onnx, out, "int8-dynamic", force=True)
    assert out.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]   # no temp files left behind
