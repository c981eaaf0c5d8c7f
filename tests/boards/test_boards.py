"""Board profiles: every shipped profile validates, detection from fake device-tree/cpuinfo files, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgekit import boards
from edgekit.cli import main
from edgekit.errors import BoardError

EXPECTED = {"rpi4", "rpi5", "jetson-orin-nano", "apple-m1", "generic-aarch64", "x86-64", "x86-64-avx512-vnni"}

A72_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""
A76_CPUINFO = A72_CPUINFO.replace("0xd08", "0xd0b").replace("cpuid", "cpuid asimddp")
X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c\n"
X86_VNNI = X86_AVX2.rstrip("\n") + " avx512f avx512bw avx512vl avx512_vnni\n"


def test_all_profiles_load_and_validate():
    profs = {p.name: p for p in boards.profiles()}
    assert EXPECTED <= set(profs)
    for p in profs.values():
        assert p.cores >= 1 and p.memory_gb > 0
        assert p.peak_gflops_fp32 > 0 and p.peak_gops_int8 >= p.peak_gflops_fp32  # int8 never slower than fp32
        assert {"peak_gflops_fp32", "peak_gops_int8", "mem_bandwidth_gbs"} <= set(p.sources)
        assert p.tvm_target["kind"] == "llvm"
        assert json.loads(p.to_json())["name"] == p.name
        # round trip: the JSON form rebuilds the same frozen profile
        assert boards.BoardProfile.from_dict(json.loads(p.to_json())) == p


def test_isa_facts_the_planner_relies_on():
    assert not boards.get_profile("rpi4").has("dotprod")
    assert boards.get_profile("rpi5").has("dotprod")
    assert boards.get_profile("x86-64-avx512-vnni").has("avx512_vnni")
    rpi4 = boards.get_profile("rpi4")
    assert rpi4.tvm_target == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
    assert rpi4.cross_compiler == "aarch64-linux-gnu-g++"
    assert boards.get_profile("x86-64").cross_compiler is None
    assert boards.get_profile("apple-m1").tvm_target["mtriple"] == "arm64-apple-macos"
    assert boards.get_profile("jetson-orin-nano").accelerators[0]["name"] == "gpu"


def test_profiles_are_frozen():
    with pytest.raises(AttributeError):
        boards.get_profile("rpi4").cores = 8  # type: ignore[misc]


def test_aliases():
    assert boards.get_profile("Pi4").name == "rpi4"
    assert boards.get_profile("apple-m-series").name == "apple-m1"


def test_unknown_board_lists_known_ones():
    with pytest.raises(BoardError) as err:
        boards.get_profile("rpi9")
    msg = str(err.value)
    assert "'rpi9'" in msg
    for name in EXPECTED:
        assert name in msg


@pytest.mark.parametrize("bad, what", [
    ({"cores": "four"}, "cores"),
    ({"tvm_target": {"mtriple": "x"}}, "kind"),
    ({"sources": {}}, "sources"),
    ({"color": "red"}, "unknown field"),
])
def test_invalid_profile_rejected(bad, what):
    data = boards.get_profile("rpi4").to_dict()
    data.update(bad)
    with pytest.raises(BoardError, match=what):
        boards.BoardProfile.from_dict(data, origin="test.json")


def _files(tmp_path, model: str | None, cpuinfo: str):
    paths = []
    if model is not None:
        (tmp_path / "model").write_bytes(model.encode() + b"\x00")  # device-tree strings are NUL-terminated
        paths.append(tmp_path / "model")
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    return paths, tmp_path / "cpuinfo"


@pytest.mark.parametrize("model, cpuinfo, machine, expected", [
    ("Raspberry Pi 4 Model B Rev 1.4", A72_CPUINFO, "aarch64", "rpi4"),
    ("Raspberry Pi 5 Model B Rev 1.0", A76_CPUINFO, "aarch64", "rpi5"),
    ("NVIDIA Jetson Orin Nano Developer Kit", A72_CPUINFO, "aarch64", "jetson-orin-nano"),
    (None, A72_CPUINFO, "aarch64", "rpi4"),                # no device tree: the CPU part decides
    ("Pine64 RockPro64", "processor: 0\nCPU part\t: 0xd03\n", "aarch64", "generic-aarch64"),
    (None, X86_AVX2, "x86_64", "x86-64"),
    (None, X86_VNNI, "x86_64", "x86-64-avx512-vnni"),
    (None, "", "riscv64", "generic-aarch64"),
])
def test_detect_from_fake_files(tmp_path, model, cpuinfo, machine, expected):
    dt, cpu = _files(tmp_path, model, cpuinfo)
    assert boards.detect(dt_model_paths=dt, cpuinfo_path=cpu, machine=machine, system="Linux").name == expected


def test_detect_apple(tmp_path):
    assert boards.detect(dt_model_paths=[], cpuinfo_path=tmp_path / "none", machine="arm64",
                         system="Darwin").name == "apple-m1"


def test_detect_missing_files_falls_back(tmp_path):
    prof = boards.detect(dt_model_paths=[tmp_path / "nope"], cpuinfo_path=tmp_path / "nope", machine="aarch64",
                         system="Linux")
    assert prof.name == "generic-aarch64"


def test_host_profile_has_real_cores():
    import os

    host = boards.host_profile()
    assert host.cores == len(os.sched_getaffinity(0))
    base = boards.get_profile(host.name)
    assert host.peak_gflops_fp32 == pytest.approx(base.peak_gflops_fp32 * host.cores / base.cores)


def test_cli_boards_list(capsys):
    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out
    assert main(["boards", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= EXPECTED
    assert sum(r["detected"] for r in rows) == 1


def test_cli_boards_show(capsys):
    assert main(["boards", "show", "rpi4"]) == 0
    out = capsys.readouterr().out
    assert "cortex-a72" in out and "sources:" in out
    assert main(["boards", "show", "rpi5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu"] == "Cortex-A76"


def test_cli_unknown_board_exit_code():
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "boards", "show", "rpi9"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "known boards: " in proc.stderr and "rpi4" in proc.stderr


def test_cli_doctor(capsys):
    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["board"]["name"] == boards.detect().name
    ort_row = next(r for r in rep["backends"] if r["name"] == "onnxruntime")
    assert ort_row["available"] is True
    assert any(d["delegate"] == "CPUExecutionProvider" and d["usable"] for d in rep["delegates"])
    for m in rep["modules"]:
        assert (m["install"] is None) == m["installed"]
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "board: " in out and "onnxruntime" in out


def test_tvm_accepts_every_target():
    """TVM parses each profile's target, and its derived ISA features agree with the profile's."""
    tvm = pytest.importorskip("tvm")
    for p in boards.profiles():
        target = tvm.target.Target(dict(p.tvm_target))
        assert str(target.kind) == "llvm"
        if p.arch in ("aarch64", "arm64"):
            assert bool(target.attrs["feature.has_dotprod"]) == p.has("dotprod"), p.name
            assert bool(target.attrs["feature.has_asimd"]) == p.has("neon"), p.name
        for acc in p.accelerators:
            if acc.get("tvm_target"):
                assert str(tvm.target.Target(dict(acc["tvm_target"])).kind) == acc["tvm_target"]["kind"]


def test_doctor_check_import_catches_broken_installs(tmp_path, monkeypatch):
    from edgekit.commands.doctor import check_import

    (tmp_path / "edgekit_broken_mod.py").write_text("from typing_extensions import no_such_name\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    err = check_import("edgekit_broken_mod")
    assert err is not None and err.startswith("ImportError") and "no_such_name" in err
    assert check_import("json") is None
