"""Session fixtures of the app tests: the prepared models are built once per test session (or reused from
``$EDGEKIT_CACHE_DIR`` when it is set) so the whole area stays within a few minutes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def app_cache(tmp_path_factory) -> Path:
    """The cache root the apps use during the tests (EDGEKIT_CACHE_DIR when set, else a session temp dir)."""
    root = os.environ.get("EDGEKIT_CACHE_DIR")
    path = Path(root) if root else tmp_path_factory.mktemp("edgekit-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEKIT_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def vision_bundle(app_cache) -> Path:
    """The default EfficientNet-Lite0 bundle (ONNX fp32 + int8), as `edgekit demo` builds it."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from edgekit.apps import vision

    return vision.prepare(targets=["onnx"], progress=False)


@pytest.fixture(scope="session")
def classifier(vision_bundle):
    from edgekit.apps import vision

    return vision.Classifier(vision_bundle, variant="onnx-fp32")


@pytest.fixture(scope="session")
def embedder(app_cache):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from edgekit.apps import bert

    return bert.Embedder(bert.prepare(progress=False))


@pytest.fixture(scope="session")
def digit_judge():
    from edgekit.apps import diffusion

    return diffusion.DigitsJudge()
