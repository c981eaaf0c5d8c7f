"""Fixtures of the TVM fallback tests: tiny models and composites compiled once per session (TVM is slow-ish)."""

from __future__ import annotations

from pathlib import Path

import pytest

import models

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'edgekit-sdk[tvm]')")

@pytest.fixture(scope="session")
def tvm_models(model_dir) -> dict[str, Path]:
    return {
        "bert": models.save(models.bert_block(), model_dir / "tvm_bert.onnx"),
        "cnn": models.save(models.cnn(), model_dir / "tvm_cnn.onnx"),
        "mlp1": models.save(models.mlp(batch=1), model_dir / "tvm_mlp1.onnx"),
        "cumsum": models.save(models.cumsum_model(), model_dir / "tvm_cumsum.onnx"),
        "celu": models.save(models.celu_model(), model_dir / "tvm_celu.onnx"),
        "branches": models.save(models.branches_model(), model_dir / "tvm_branches.onnx"),
    }


@pytest.fixture(scope="session")
def bert_composite(tvm_models, tmp_path_factory, cross_cc) -> Path:
    """BERT block, Softmax and Erf forced onto TVM, kernels for the host and rpi4 (built once)."""
    from edgekit.converters.composite import build_composite

    out = tmp_path_factory.mktemp("composite") / "bert"
    return build_composite(tvm_models["bert"], out, "onnx", fallback_ops=["Softmax", "Erf"], boards=["host", "rpi4"])


@pytest.fixture(scope="session")
def coreml_cumsum_composite(tvm_models, tmp_path_factory) -> Path:
    """CumSum model for Core ML: CumSum (not in the translator's table) becomes TVM kernels, host + Apple."""
    from edgekit.converters import get_exporter

    pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'edgekit-sdk[coreml]')")
    try:
        exporter = get_exporter("coreml")
    except Exception as exc:  # the Core ML exporter is not registered in this checkout
        pytest.skip(f"no Core ML exporter: {exc}")
    why = exporter.unavailable_reason()
    if why:
        pytest.skip(f"Core ML exporter unavailable: {why}")
    from edgekit.converters.composite import build_composite

    out = tmp_path_factory.mktemp("composite") / "cumsum_coreml"
    return build_composite(tvm_models["cumsum"], out, "coreml", boards=["host"])
