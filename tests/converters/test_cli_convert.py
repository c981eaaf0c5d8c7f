"""``edgekit convert`` on the command line: bundle, summary table, JSON, one-line errors with exit status 2."""

from __future__ import annotations

import json

import numpy as np

from edgekit.cli import main


def test_convert_prints_table_and_writes_bundle(tmp_path, cnn_onnx, capsys):
    cal = tmp_path / "cal.npz"
    np.savez(cal, image=np.random.default_rng(0).standard_normal((12, 3, 16, 16)).astype(np.float32))
    rc = main(["convert", str(cnn_onnx), "-o", str(tmp_path / "b"), "--to", "onnx", "--quantize", "fp32,int8",
               "--calibration", str(cal), "--prune", "2:4"])
    out = capsys.readouterr().out
    assert rc == 0
    for vid in ("onnx-fp32", "onnx-int8", "onnx-fp32-2of4", "onnx-int8-2of4"):
        assert vid in out
    assert "passed validation" in out and (tmp_path / "b" / "report.md").is_file()
    assert main(["inspect", str(tmp_path / "b")]) == 0
    assert "onnx-int8-2of4" in capsys.readouterr().out


def test_convert_json(tmp_path, mlp_onnx, capsys):
    rc = main(["convert", str(mlp_onnx), "-o", str(tmp_path / "b"), "--to", "onnx", "--quantize", "fp32,fp16",
               "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["id"] for v in data["variants"]] == ["onnx-fp32", "onnx-fp16"]
    assert all(v["validation"]["passed"] for v in data["variants"])


def test_cli_errors_are_one_line_exit_2(tmp_path, cnn_onnx, capsys):
    out = tmp_path / "b"
    cases = [
        (["--quantize", "int8"], "--calibration"),
        (["--prune", "channels:7"], "--prune"),
        (["--quantize", "int3"], "int3"),
        (["--calibration", str(tmp_path / "nope.npz")], "nope.npz"),
        (["--validation", str(tmp_path / "nope.npz")], "--validation"),
    ]
    for extra, needle in cases:
        rc = main(["convert", str(cnn_onnx), "-o", str(out), "--to", "onnx"] + extra)
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not out.exists()
    out.mkdir()
    assert main(["convert", str(cnn_onnx), "-o", str(out), "--to", "onnx"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(cnn_onnx), "-o", str(out), "--to", "onnx", "--quantize", "fp32", "--force"]) == 0
