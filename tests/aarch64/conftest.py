"""Fixtures of the aarch64 tests: the folder boards/qemu/make_fixtures.py built on the host.

Under QEMU (boards/qemu/run-tests.sh) the folder is given by EDGEKIT_AARCH64_FIXTURES. On the host, without
it, the fixtures are built once per session in a temp folder, so these tests run in the normal suite too.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> Path:
    given = os.environ.get("EDGEKIT_AARCH64_FIXTURES")
    if given:
        return Path(given)
    if platform.machine() in ("aarch64", "arm64"):
        pytest.skip("EDGEKIT_AARCH64_FIXTURES is not set (boards/qemu/run-tests.sh builds them on the host)")
    out = tmp_path_factory.mktemp("aarch64") / "fixtures"
    subprocess.run([sys.executable, str(ROOT / "boards" / "qemu" / "make_fixtures.py"), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def built(fixtures) -> dict:
    return json.loads((fixtures / "fixtures.json").read_text())
