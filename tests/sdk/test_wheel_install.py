"""The deploy path without publishing: edgekit's wheel installed into a clean venv runs a bundle; the QEMU runner's
skip is a failure in CI.

The wheel is built from a copy of the sources (no stale ``build/`` of the checkout can leak into it) and installed
with no extra into ``python -m venv`` without system site packages: pip takes numpy, onnx and onnxruntime from its
cache or index, as on a board. Outputs are compared with this process's run of the same bundle: the same runtime
on the same machine, so bit-identical (tolerance 0).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import edgekit

from models import mlp, save

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("sdk", "converters", "runtimes", "apps", "boards", "pyproject.toml", "README.md")
#: converter and heavy extras a runtime-only install must not pull
CONVERTERS = ("torch", "tensorflow", "coremltools", "onnxslim", "tvm", "ai_edge_litert")


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(tmp / "dist"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("edgekit_sdk-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_in_clean_venv_runs_a_bundle(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        meta = next(z.read(n).decode() for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        assert "edgekit/runtimes/ort_io.py" in z.namelist()
    assert "Name: edgekit-sdk" in meta
    bundle = edgekit.convert(save(mlp(), tmp_path / "mlp.onnx"), tmp_path / "mlp.bundle", targets=["onnx"],
                             quantize=["fp32"], progress=False)
    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ref = edgekit.load(bundle.path).run({"x": x})["logits"]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, timeout=600, env=env)
    script = (
        "import importlib.util, json, sys, numpy as np, edgekit\n"
        "s = edgekit.load(sys.argv[1]); np.save(sys.argv[3], s.run({'x': np.load(sys.argv[2])})['logits'])\n"
        f"print(json.dumps({{'file': edgekit.__file__, 'prefix': sys.prefix, 'found': "
        f"[m for m in {CONVERTERS!r} if importlib.util.find_spec(m)]}}))\n")
    out = subprocess.run([str(py), "-c", script, str(bundle.path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         check=True, timeout=300, env=env, cwd=tmp_path, capture_output=True, text=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(info["file"]).is_relative_to(venv), info        # the wheel's edgekit, not this checkout's
    assert Path(info["prefix"]) == venv
    assert info["found"] == [], f"a runtime-only install pulled converters: {info['found']}"
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), ref)
    cli = subprocess.run([str(venv / "bin" / "edgekit"), "backends"], timeout=120, env=env, capture_output=True,
                         text=True)
    assert cli.returncode == 0 and "onnxruntime" in cli.stdout, cli.stderr


def _fake_path(tmp: Path) -> str:
    """A PATH with the few tools run-tests.sh needs before step 1, no qemu-aarch64 and an apt-get that fails."""
    bin_ = tmp / "bin"
    bin_.mkdir()
    for tool in ("dirname", "date", "id", "cat", "sha256sum", "cut", "env"):
        shutil.which(tool) and os.symlink(shutil.which(tool), bin_ / tool)
    (bin_ / "apt-get").write_text("#!/bin/sh\nexit 100\n")
    (bin_ / "apt-get").chmod(0o755)
    return str(bin_)


@pytest.mark.parametrize("ci,code,word", [("", 0, "SKIPPED"), ("true", 1, "FAILED")])
def test_qemu_runner_without_qemu_fails_in_ci(tmp_path, ci, code, word):
    env = {"PATH": _fake_path(tmp_path), "HOME": str(tmp_path), "PYTHON": "/nonexistent", "CI": ci}
    res = subprocess.run([shutil.which("bash"), str(ROOT / "boards/qemu/run-tests.sh")], env=env, timeout=60,
                         capture_output=True, text=True)
    assert res.returncode == code, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith(f"{word}: qemu-aarch64 is not installed"), res.stdout
