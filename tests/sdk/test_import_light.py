"""``import edgekit`` must not pull heavy libraries (TVM, coremltools, torch, TensorFlow)."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_light():
    code = (
        "import sys, edgekit; edgekit.backends();"
        "heavy = [m for m in ('tvm', 'coremltools', 'torch', 'tensorflow', 'onnx2tf') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
