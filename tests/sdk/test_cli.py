"""The CLI: inspect, run and bench on ONNX, TFLite and TVM; one-line errors with exit 2/1."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgekit.cli import main

from models import ort_reference


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_backends(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "edgekit 0.1.0" in capsys.readouterr().out
    code, out, _ = _cli(capsys, "backends", "--json")
    assert code == 0
    names = {r["name"] for r in json.loads(out)}
    assert {"onnxruntime", "litert", "tvm", "coreml"} <= names


def test_inspect_onnx(capsys, cnn_onnx):
    code, out, _ = _cli(capsys, "inspect", str(cnn_onnx), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["format"] == "onnx" and info["opset"] == 17
    assert info["ops"]["Conv"] == 2 and info["ops"]["Softmax"] == 1
    # 8*3*3*3+8 + 16*8*3*3+16 + 10*16+10 parameters
    assert info["parameters"] == 224 + 1168 + 170
    assert info["inputs"] == [{"name": "image", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    code, out, _ = _cli(capsys, "inspect", str(cnn_onnx))
    assert code == 0 and "Conv" in out and "image: float32[1, 3, 16, 16]" in out


def test_run_with_inputs_and_output_file(capsys, tmp_path, mlp_onnx):
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_path = tmp_path / "out.npz"
    code, out, _ = _cli(capsys, "run", str(mlp_onnx), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(out_path))
    assert code == 0 and "logits: float32[4, 10]" in out
    with np.load(out_path) as z:
        np.testing.assert_array_equal(z["logits"], ort_reference(mlp_onnx, {"x": x})["logits"])
    code, _, err = _cli(capsys, "run", str(mlp_onnx), "-o", str(out_path))
    assert code == 2 and "exists" in err and "--force" in err
    code, out, _ = _cli(capsys, "run", str(mlp_onnx), "-o", str(out_path), "--force", "--seed", "7", "--json")
    assert code == 0 and json.loads(out)["outputs"][0]["shape"] == [1, 10]


def test_bench_json(capsys, cnn_onnx):
    code, out, _ = _cli(capsys, "bench", str(cnn_onnx), "--runs", "20", "--warmup", "2", "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["runs"] == 20 and 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["backend"] == "onnxruntime"


def test_run_inspect_bench_tflite_and_tvm(capsys, tflite_mlp, tvm_mlp):
    for model in (tflite_mlp[0], tvm_mlp):
        for argv in (["inspect", str(model), "--json"], ["run", str(model), "--json"],
                     ["bench", str(model), "--runs", "5", "--warmup", "1", "--json"]):
            code, out, err = _cli(capsys, *argv)
            assert code == 0, err
            json.loads(out)
    code, out, _ = _cli(capsys, "inspect", str(tflite_mlp[0]), "--json")
    info = json.loads(out)
    assert info["format"] == "tflite" and "FULLY_CONNECTED" in info["ops"] and info["parameters"] >= 170


@pytest.mark.parametrize(
    "argv, code, pattern",
    [
        (["run", "/no/such/model.onnx"], 2, "no such file"),
        (["run", "{mlp}", "--backend", "nope"], 2, "unknown backend"),
        (["run", "{mlp}", "--input", "x"], 2, "NAME=FILE.npy"),
        (["run", "{mlp}", "--input", "x=/no/file.npy"], 2, "cannot read"),
        (["bench", "{mlp}", "--runs", "0"], 2, "runs must be >= 1"),
        (["inspect"], 2, "required"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_cli_errors_are_one_line(capsys, mlp_onnx, argv, code, pattern):
    argv = [a.replace("{mlp}", str(mlp_onnx)) for a in argv]
    try:
        got = main(argv)
    except SystemExit as exc:
        got = exc.code
    _, err = capsys.readouterr()
    assert got == code
    assert pattern in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_console_script_runtime_failure_exit_1(tmp_path):
    """A model that loads but fails at run time: exit 1, one line, traceback only with --debug."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]),
                           helper.make_tensor_value_info("s", TensorProto.INT64, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    np.save(tmp_path / "x.npy", np.zeros(6, np.float32))
    np.save(tmp_path / "s.npy", np.array([4], np.int64))
    argv = ["run", str(path), "-i", f"x={tmp_path / 'x.npy'}", "-i", f"s={tmp_path / 's.npy'}"]
    res = subprocess.run([sys.executable, "-m", "edgekit.cli", *argv], capture_output=True, text=True)
    assert res.returncode == 1 and "onnxruntime failed" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run([sys.executable, "-m", "edgekit.cli", "--debug", *argv], capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" in res.stderr
