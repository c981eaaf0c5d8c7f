"""Shared fixtures: models built by tests/models.py, saved into a session-wide temp folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import models  # noqa: E402

CROSS_CC = "aarch64-linux-gnu-g++"


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
def digits_cnn_onnx(model_dir) -> Path:
    """models.cnn trained on scikit-learn's digits (a few seconds, once per session): output depends on input."""
    pytest.importorskip("torch", reason="training the digits CNN needs torch (edgekit-sdk[torch])")
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (edgekit-sdk[apps])")
    return models.save(models.digits_cnn(), model_dir / "digits_cnn.onnx")


@pytest.fixture(scope="session")
def two_onnx(model_dir) -> Path:
    return models.save(models.two_inputs(), model_dir / "two.onnx")


@pytest.fixture(scope="session")
def bert_onnx(model_dir) -> Path:
    return models.save(models.bert_block(), model_dir / "bert.onnx")


@pytest.fixture(scope="session")
def tflite_mlp(model_dir):
    """(tflite path, onnx source) of a 2-input, 2-output model converted by edgekit's TFLite exporter."""
    from edgekit.converters import get_exporter

    exp = get_exporter("tflite")
    why = exp.unavailable_reason()
    if why:
        pytest.skip(f"TFLite exporter not usable here: {why}")
    src = models.save(models.two_in_two_out(), model_dir / "two_in_two_out.onnx")
    return exp.export(src, model_dir / "two_in_two_out.tflite", "fp32"), src


def reuse_dir(name: str, tmp_path_factory) -> tuple[Path, bool]:
    """(folder for a slow build, whether it is already built): under ``$EDGEKIT_TEST_CACHE/name`` when that is set
    (benchmarks/mutation.sh sets it: hundreds of pytest runs of the same TVM builds), else a fresh temp folder."""
    import os

    root = os.environ.get("EDGEKIT_TEST_CACHE")
    if not root:
        return tmp_path_factory.mktemp(name), False
    d = Path(root) / name
    done = (d / ".built").is_file()
    d.mkdir(parents=True, exist_ok=True)
    return d, done


@pytest.fixture(scope="session")
def tvm_mlp(tmp_path_factory, mlp_onnx):
    """A TVM Relax module compiled for the host from tests/models.py's MLP (batch fixed to 3)."""
    pytest.importorskip("tvm")
    from edgekit.converters.tvm_compile import compile_onnx

    d, built = reuse_dir("tvm", tmp_path_factory)
    if built:
        return d / "mlp.so"
    lib = compile_onnx(mlp_onnx, d / "mlp.so", target="llvm", shape_dict={"x": [3, 16]})
    (d / ".built").touch()
    return lib


@pytest.fixture
def torch_to_tflite():
    """torch, where PyTorch -> TFLite works here (litert-torch in this environment or in its tool environment);
    the test is skipped with the reason otherwise."""
    torch = pytest.importorskip("torch")
    from edgekit.converters.export_tflite import torch_signatures_unavailable_reason

    why = torch_signatures_unavailable_reason()
    if why:
        pytest.skip(why)
    return torch


@pytest.fixture(scope="session")
def cross_cc() -> str:
    """The aarch64 cross compiler, or skip naming the packages that provide it.

    Under CI (``CI`` set, root, Debian's apt-get) it is installed first, as boards/qemu/run-tests.sh installs
    qemu-user: a clean CI machine then tests the rpi4 kernels instead of skipping them, and with ``CI=true`` a
    compiler still missing fails the test instead of skipping it.
    """
    if shutil.which(CROSS_CC) is None and os.environ.get("CI") and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "g++-aarch64-linux-gnu"]):
            subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
    if shutil.which(CROSS_CC) is None:
        why = f"{CROSS_CC} is not installed (apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu)"
        if os.environ.get("CI") == "true":  # CI installs it above: its absence there is a failure, not a skip
            pytest.fail(f"{why}, and installing it failed under CI")
        pytest.skip(why)
    return CROSS_CC
