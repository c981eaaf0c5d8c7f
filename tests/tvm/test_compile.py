"""``edgekit compile``: whole models compiled by TVM for the host and for boards; errors name problem and fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgekit
from edgekit.cli import main
from edgekit.converters.tvm_compile import binary_arch, compile_onnx
from edgekit.errors import ConversionError, UnsupportedOpError

import models


@pytest.fixture(scope="session")
def host_lib(tvm_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "mlp_host"
    assert main(["compile", str(tvm_models["mlp1"]), "--board", "host", "-o", str(out)]) == 0
    return out.with_suffix(".so")


def test_compile_host_runs_and_matches_onnxruntime(host_lib, tvm_models):
    assert binary_arch(host_lib)[0] == "elf"
    sess = edgekit.load(host_lib)
    assert sess.backend == "tvm"
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    ref = models.ort_reference(tvm_models["mlp1"], {"x": x})["logits"]
    np.testing.assert_allclose(sess.run({"x": x})["logits"], ref, atol=1e-5, rtol=1e-5)  # fp32 TVM vs ORT
    meta = json.loads(host_lib.with_suffix(".json").read_text())
    assert meta["board"] == "host" and meta["target"]["kind"] == "llvm"


def test_existing_output_needs_force(host_lib, tvm_models, capsys):
    stem = str(host_lib.with_suffix(""))
    assert main(["compile", str(tvm_models["mlp1"]), "-o", stem]) == 2
    assert "exists; pass --force" in capsys.readouterr().err


def test_compile_rpi4_is_an_aarch64_elf(tvm_models, tmp_path, cross_cc, capsys):
    out = tmp_path / "mlp_rpi4"
    assert main(["compile", str(tvm_models["mlp1"]), "--board", "rpi4", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    lib = out.with_suffix(".so")
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 0xB7  # EM_AARCH64
    assert report["arch"] == "aarch64" and binary_arch(lib) == ("elf", "aarch64")


def test_compile_apple_gives_macho_arm64_objects(tvm_models, tmp_path, capsys):
    out = tmp_path / "mlp_mac"
    out.with_suffix(".so").write_bytes(b"not what an Apple build writes here")  # must not block the .tar
    assert main(["compile", str(tvm_models["mlp1"]), "--board", "apple-m1", "-o", str(out)]) == 0
    lib = out.with_suffix(".tar")
    assert binary_arch(lib) == ("tar", "mach-o/arm64")
    assert json.loads(out.with_suffix(".json").read_text())["library"] == "mlp_mac.tar"
    # the existence check looks at the file this platform writes (.tar here), and --force replaces it
    lib.write_bytes(b"stale")
    assert main(["compile", str(tvm_models["mlp1"]), "--board", "apple-m1", "-o", str(out) + ".tar"]) == 2
    assert "mlp_mac.tar exists; pass --force" in capsys.readouterr().err
    assert main(["compile", str(tvm_models["mlp1"]), "--board", "apple-m1", "-o", str(out), "--force"]) == 0
    assert binary_arch(lib) == ("tar", "mach-o/arm64")


@pytest.mark.parametrize("output, board, system, lib", [
    ("m", "host", "linux", "m.so"), ("m.so", "host", "darwin", "m.so"), ("m.json", "rpi4", "linux", "m.so"),
    ("m", "apple-m1", "darwin", "m.dylib"), ("m.so", "apple-m1", "darwin", "m.dylib"),
    ("m.dylib", "apple-m1", "linux", "m.tar"), ("m.tar", "apple-m1", "darwin", "m.dylib"),
])
def test_output_names_per_platform(tmp_path, output, board, system, lib):
    """What the existence check looks at is what compile_onnx writes: .so, or .dylib/.tar for Apple code."""
    from edgekit.commands.compile import output_paths
    from edgekit.converters.tvm_compile import BoardTarget, board_target, library_path

    bt = BoardTarget("host", {"kind": "llvm"}) if board == "host" else board_target(board)
    got_lib, got_sig = output_paths(tmp_path / output, bt, system)
    assert (got_lib.name, got_sig.name) == (lib, "m.json")
    assert library_path(tmp_path / output, bt.is_apple, system) == got_lib  # the name compile_onnx writes


def test_unknown_board_lists_the_known_ones(tvm_models, tmp_path, capsys):
    assert main(["compile", str(tvm_models["mlp1"]), "--board", "rpi9", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown board 'rpi9'" in err and "rpi4" in err


def test_tuning_for_an_aarch64_board_is_refused_with_the_reason(tvm_models, tmp_path, capsys):
    args = ["compile", str(tvm_models["mlp1"]), "--board", "rpi4", "--tune-trials", "8", "-o", str(tmp_path / "x")]
    assert main(args) == 2
    assert "cannot tune for board 'rpi4' here" in capsys.readouterr().err


def test_op_tvm_cannot_compile_is_named(tvm_models, tmp_path, capsys):
    assert main(["compile", str(tvm_models["celu"]), "-o", str(tmp_path / "celu")]) == 1
    assert "TVM cannot compile op(s) Celu" in capsys.readouterr().err
    from edgekit.converters.composite import build_composite

    # forcing an op onto TVM that TVM lacks fails at build time, naming it
    with pytest.raises(UnsupportedOpError, match="Celu"):
        build_composite(tvm_models["celu"], tmp_path / "comp", "onnx", fallback_ops=["Celu"])
    assert not (tmp_path / "comp").exists()  # nothing half-written
    # an op the target lacks and TVM lacks too: named with both reasons, before any slow export
    with pytest.raises(UnsupportedOpError, match="not in the tflite op table, and TVM cannot compile Celu either"):
        build_composite(tvm_models["celu"], tmp_path / "comp2", "tflite")


def test_missing_cross_compiler_names_the_apt_package(tvm_models, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no compilers on PATH
    with pytest.raises(ConversionError, match="apt-get install gcc-aarch64-linux-gnu g..-aarch64-linux-gnu"):
        compile_onnx(tvm_models["mlp1"], tmp_path / "m", {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
                     cc="aarch64-linux-gnu-g++")
    from edgekit.converters.composite import build_composite

    with pytest.raises(ConversionError, match="aarch64-linux-gnu-g\\+\\+.*rpi4.*apt-get install"):
        build_composite(tvm_models["bert"], tmp_path / "c", "onnx", fallback_ops=["Erf"], boards=["host", "rpi4"])


def test_compile_metal_for_apple_and_refuse_it_elsewhere(tvm_models, tmp_path, capsys):
    import tarfile

    out = tmp_path / "mlp_metal"
    assert main(["compile", str(tvm_models["mlp1"]), "--board", "apple-m1", "--device", "metal", "-o", str(out)]) == 0
    lib = out.with_suffix(".tar")
    assert binary_arch(lib) == ("tar", "mach-o/arm64")
    with tarfile.open(lib) as tf:
        assert b"#include <metal_stdlib>" in b"".join(tf.extractfile(m).read() for m in tf.getmembers())
    assert main(["compile", str(tvm_models["mlp1"]), "--board", "rpi4", "--device", "metal",
                 "-o", str(tmp_path / "x")]) == 2
    assert "needs an Apple board" in capsys.readouterr().err


def test_scalar_inputs_keep_rank_zero(tmp_path):
    """0-d inputs (Clip's min/max) reach TVM as rank-0 tensors (np.ascontiguousarray would make them (1,))."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], "clip",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]),
                           helper.make_tensor_value_info("lo", TensorProto.FLOAT, []),
                           helper.make_tensor_value_info("hi", TensorProto.FLOAT, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    lib = compile_onnx(models._model(g), tmp_path / "clip")
    x = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    got = edgekit.load(lib).run({"x": x, "lo": np.array(0.2, np.float32), "hi": np.array(0.6, np.float32)})["y"]
    np.testing.assert_array_equal(got, np.clip(x, 0.2, 0.6))  # clipping is exact
