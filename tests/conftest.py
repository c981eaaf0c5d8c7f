"""Shared fixtures: models built by tests/models.py, saved into a session-wide temp folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import models  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mlp_onnx(model_dir) -> Path:
    return models.save(models.mlp(), model_dir / "mlp.onnx")


@pytest.fixture(scope="session")
def cnn_onnx(model_dir) -> Path:
    return models.save(models.cnn(), model_dir / "cnn.onnx")


@pytest.fixture(scope="session")
def two_onnx(model_dir) -> Path:
    return models.save(models.two_inputs(), model_dir / "two.onnx")


@pytest.fixture(scope="session")
def bert_onnx(model_dir) -> Path:
    return models.save(models.bert_block(), model_dir / "bert.onnx")


@pytest.fixture(scope="session")
def tflite_mlp(tmp_path_factory):
    """(path, torch module) of a 2-input TFLite model converted by litert-torch."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch", reason="litert-torch (edgekit[tflite-export]) not installed")

    class TwoIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x, bias):
            return torch.relu(self.fc(x)) + bias, torch.tanh(x).sum(dim=1, keepdim=True)

    m = TwoIn().eval()
    path = tmp_path_factory.mktemp("tflite") / "two_in.tflite"
    litert_torch.convert(m, (torch.randn(2, 16), torch.randn(2, 10))).export(str(path))
    return path, m


@pytest.fixture(scope="session")
def tvm_mlp(tmp_path_factory, mlp_onnx):
    """A TVM Relax module compiled for the host from tests/models.py's MLP (batch fixed to 3)."""
    pytest.importorskip("tvm")
    from edgekit.converters.tvm_compile import compile_onnx

    out = tmp_path_factory.mktemp("tvm") / "mlp.so"
    return compile_onnx(mlp_onnx, out, target="llvm", shape_dict={"x": [3, 16]})
