"""Which board's TVM kernels a composite runs: "host" only on the machine it was built for, else the board's."""

from __future__ import annotations

import json
import platform
import shutil

import pytest

import edgekit
from edgekit.errors import ModelLoadError
from edgekit.runtimes.composite import _host_board

RPI4 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
RPI5 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}
APPLE = {"kind": "llvm", "mtriple": "arm64-apple-macos", "mcpu": "apple-m1"}


def _plan(boards, host_machine="x86_64", host_system="Linux", **targets) -> dict:
    plan = {"boards": list(boards), "targets": {"host": {"kind": "llvm", "mcpu": "znver3"}, **targets}}
    if host_machine is not None:
        plan["host"] = {"machine": host_machine, "system": host_system}
    return plan


def test_host_kernels_on_the_build_machine():
    plan = _plan(["host", "rpi4"], rpi4=RPI4)
    assert _host_board(plan, "x86_64", "Linux", detected="x86-64") == "host"
    assert _host_board(plan, "AMD64", "Linux", detected="x86-64") == "host"  # another spelling of x86_64


def test_x86_plan_on_a_pi_uses_the_pi_kernels():
    plan = _plan(["host", "rpi4", "rpi5"], rpi4=RPI4, rpi5=RPI5)
    assert _host_board(plan, "aarch64", "Linux", detected="rpi4") == "rpi4"
    assert _host_board(plan, "aarch64", "Linux", detected="rpi5") == "rpi5"
    # an aarch64 Linux machine that is no known board: the first aarch64-linux board of the plan
    assert _host_board(plan, "aarch64", "Linux", detected="generic-aarch64") == "rpi4"


def test_apple_kernels_only_on_macos():
    plan = _plan(["host", "apple-m1", "apple-m1:metal", "rpi4"], **{"apple-m1": APPLE, "rpi4": RPI4})
    assert _host_board(plan, "arm64", "Darwin", detected="apple-m1") == "apple-m1"
    assert _host_board(plan, "aarch64", "Linux", detected="generic-aarch64") == "rpi4"


def test_plan_built_on_arm_host():
    plan = _plan(["host", "rpi4"], host_machine="aarch64", rpi4=RPI4)
    assert _host_board(plan, "aarch64", "Linux", detected="rpi4") == "host"
    with pytest.raises(ModelLoadError, match=r"host \(aarch64/Linux\), rpi4 \(aarch64/Linux\).*x86_64/Linux"):
        _host_board(plan, "x86_64", "Linux", detected="x86-64")


def test_legacy_plan_without_host_record_trusts_host():
    assert _host_board(_plan(["host", "rpi4"], host_machine=None, rpi4=RPI4), "aarch64", "Linux", "rpi4") == "host"


def test_targets_missing_fall_back_to_board_profiles():
    plan = {"boards": ["rpi4"]}  # no "targets": the rpi4 profile's TVM target says aarch64-linux-gnu
    assert _host_board(plan, "aarch64", "Linux", detected="generic-aarch64") == "rpi4"
    with pytest.raises(ModelLoadError, match="none for this machine"):
        _host_board(plan, "x86_64", "Linux", detected="x86-64")


def test_built_composite_records_its_host(bert_composite, tmp_path):
    """A real composite (host + rpi4): host kernels here; the same plan on an aarch64 Pi picks rpi4."""
    plan = json.loads(bert_composite.read_text())
    assert plan["host"] == {"machine": platform.machine(), "system": platform.system()}
    sess = edgekit.load(bert_composite.parent)
    assert sess._runner.board == "host"
    sess.close()
    assert _host_board(plan, "aarch64", "Linux", detected="rpi4") == "rpi4"
    # the host kernels recorded as built elsewhere, on a machine no board of the plan fits: a load error
    folder = tmp_path / "elsewhere"
    shutil.copytree(bert_composite.parent, folder)
    plan["host"]["machine"] = "riscv64"
    (folder / "plan.json").write_text(json.dumps(plan))
    if platform.machine().lower() in ("aarch64", "arm64"):
        pytest.skip("on an aarch64 machine the rpi4 kernels would be chosen")
    with pytest.raises(ModelLoadError, match=r"host \(riscv64/.*none for this machine"):
        edgekit.load(folder)
