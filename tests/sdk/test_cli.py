"""The CLI: inspect, run and bench on ONNX, TFLite and TVM; one-line errors with exit 2/1."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgekit.cli import main

import models
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


def test_run_inspect_bench_tflite_and_tvm(capsys, tflite_mlp, mlp_onnx, tvm_mlp):
    """The JSON of inspect/run/bench says what the model is and what it computed (checked against ORT)."""
    import edgekit
    from edgekit.specs import random_feeds

    tfl, src = tflite_mlp
    for model, source, backend in ((tfl, src, "litert"), (tvm_mlp, mlp_onnx, "tvm")):
        with edgekit.load(model) as sess:
            specs = [s.to_json() for s in sess.inputs]
            ref = ort_reference(source, random_feeds(sess.inputs, seed=0))  # the feeds `run` makes (seed 0)
        code, out, err = _cli(capsys, "inspect", str(model), "--json")
        assert code == 0, err
        info = json.loads(out)
        assert info["format"] == ("tflite" if backend == "litert" else "tvm") and info["inputs"] == specs
        code, out, err = _cli(capsys, "run", str(model), "--json")
        assert code == 0, err
        rep = json.loads(out)
        assert rep["backend"] == backend and rep["model"] == str(model)
        got = {r["name"]: r for r in rep["outputs"]}
        assert set(got) == set(ref)
        for name, want in ref.items():
            r = got[name]
            assert r["shape"] == list(want.shape) and r["dtype"] == want.dtype.name
            # summary statistics of the real outputs, to fp32 conversion error (1e-4 relative)
            for key, v in (("min", want.min()), ("max", want.max()), ("mean", want.mean())):
                assert r[key] == pytest.approx(float(v), rel=1e-4, abs=1e-5), (model, name, key)
            if "argmax" in r:
                assert r["argmax"] == np.argmax(want.reshape(-1, want.shape[-1]), axis=-1)[:8].tolist()
        code, out, err = _cli(capsys, "bench", str(model), "--runs", "5", "--warmup", "1", "--json")
        assert code == 0, err
        stats = json.loads(out)
        assert stats["runs"] == 5 and stats["warmup"] == 1 and stats["backend"] == backend
        assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert stats["throughput_per_s"] == pytest.approx(1e3 / stats["mean_ms"], rel=0.5)
    code, out, _ = _cli(capsys, "inspect", str(tfl), "--json")
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


def _bad_files(tmp_path, good_onnx):
    trunc = tmp_path / "model.onnx"
    trunc.write_bytes(good_onnx.read_bytes()[:300])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    return trunc, text


def test_bad_model_file_gives_one_message_everywhere(capsys, tmp_path, bert_onnx):
    """inspect, run, bench and convert: the same one line and exit 2 for a truncated or wrong-format file."""
    for bad in _bad_files(tmp_path, bert_onnx):
        want = f"edgekit: error: cannot read {bad}: not a valid ONNX file (truncated or corrupt)\n"
        for argv in (["inspect", str(bad)], ["run", str(bad)], ["bench", str(bad), "--runs", "2"],
                     ["convert", str(bad), "-o", str(tmp_path / "out"), "--to", "onnx", "--quantize", "fp32"]):
            code, out, err = _cli(capsys, *argv)
            assert (code, err) == (2, want), argv
            code, _, err = _cli(capsys, *argv, "--debug")  # after the command too; same exit status
            assert code == 2 and "Traceback" in err and err.endswith(want), argv
    assert not (tmp_path / "out").exists()


def test_bad_tflite_file(capsys, tmp_path):
    pytest.importorskip("ai_edge_litert")
    good = models.tiny_tflite(tmp_path / "tiny.tflite").read_bytes()
    bad = tmp_path / "bad.tflite"
    for data in (good[:200], b"\xf0\xff\x00\x00" + good[4:]):  # truncated; root table offset out of range
        bad.write_bytes(data)
        for command in ("inspect", "run"):
            code, _, err = _cli(capsys, command, str(bad))
            assert (code, err) == (2, f"edgekit: error: cannot read {bad}: not a valid TFLite file "
                                      "(truncated or corrupt)\n")


def _console(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *argv], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_litert_banner_only_with_verbose(tmp_path):
    """LiteRT prints "Created TensorFlow Lite XNNPACK delegate" once per process: fresh processes only."""
    pytest.importorskip("ai_edge_litert")
    model = str(models.tiny_tflite(tmp_path / "tiny.tflite"))
    for argv in (["run", model], ["inspect", model], ["bench", model, "--runs", "3"]):
        res = _console(*argv)
        assert res.returncode == 0 and "XNNPACK" not in res.stdout + res.stderr, (argv, res.stderr)
    res = _console("run", model, "--json")
    assert json.loads(res.stdout)["outputs"][0]["shape"] == [1, 4]  # stdout is the JSON alone
    for argv in (["run", model, "--verbose"], ["--verbose", "run", model]):
        res = _console(*argv)
        assert res.returncode == 0 and "Created TensorFlow Lite XNNPACK delegate" in res.stderr, argv
        assert "ran " in res.stdout


def test_global_flags_before_and_after_the_command(capsys):
    for argv in (["--debug", "inspect", "/no/model.onnx"], ["inspect", "/no/model.onnx", "--debug"],
                 ["inspect", "/no/model.onnx"], ["--verbose", "inspect", "/no/model.onnx", "--debug"]):
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and "no such file" in err.splitlines()[-1], argv
        assert ("Traceback" in err) == ("--debug" in argv), argv
    for argv in (["app", "vision", "/no/image.jpg"], ["app", "vision", "/no/image.jpg", "--debug", "--verbose"]):
        code, _, err = _cli(capsys, *argv)  # nested commands take them too; checked before any model is prepared
        assert code == 2 and "does not exist" in err.splitlines()[-1], argv


def test_bench_prints_no_progress_bar_on_a_pipe(tmp_path, mlp_onnx):
    res = _console("bench", str(mlp_onnx), "--runs", "300", "--warmup", "1")
    assert res.returncode == 0 and "it/s" not in res.stderr and "run/s" not in res.stderr
    assert "p50" in res.stdout


def test_doctor_checks_the_cross_compiler_boards_need(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no aarch64-linux-gnu-g++ on PATH
    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    cc = next(c for c in rep["cross_compilers"] if c["compiler"] == "aarch64-linux-gnu-g++")
    assert not cc["found"] and "rpi4" in cc["boards"] and "apple-m1" not in cc["boards"]
    assert cc["install"] == "apt-get install g++-aarch64-linux-gnu"
    assert any("aarch64-linux-gnu-g++" in m and "apt-get install g++-aarch64-linux-gnu" in m for m in rep["missing"])
    assert main(["doctor"]) == 0
    assert "apt-get install g++-aarch64-linux-gnu" in capsys.readouterr().out
    fake = tmp_path / "aarch64-linux-gnu-g++"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    cc = next(c for c in rep["cross_compilers"] if c["compiler"] == "aarch64-linux-gnu-g++")
    assert cc["found"] and cc["path"] == str(fake) and cc["install"] is None
    assert not any("aarch64-linux-gnu-g++" in m for m in rep["missing"])


@pytest.mark.slow
def test_inspect_core_ml_without_coremltools_banners(tmp_path, mlp_onnx):
    """coremltools' import prints "Failed to load _MLModelProxy" and version banners on Linux: only with --verbose."""
    pytest.importorskip("coremltools")
    from edgekit.converters import get_exporter

    pkg = get_exporter("coreml").export(mlp_onnx, tmp_path / "mlp.mlpackage", "fp32")
    res = _console("inspect", str(pkg))
    assert res.returncode == 0 and "coreml" in res.stdout and "x: float32" in res.stdout
    assert "Proxy" not in res.stdout + res.stderr and "coremltools" not in res.stderr, res.stderr
    res = _console("inspect", str(pkg), "--verbose")
    assert res.returncode == 0 and "Failed to load _MLModelProxy" in res.stderr
