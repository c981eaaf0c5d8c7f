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
