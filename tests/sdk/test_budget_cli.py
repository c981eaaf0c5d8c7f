"""``edgekit run/bench --budget-ms`` on a bundle and on a plain model; ``bench --plot``; bad budgets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import budget_fixtures  # noqa: E402

from edgekit.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return budget_fixtures.mlp_bundle(tmp_path_factory.mktemp("cli") / "mlp.bundle", hidden=1024)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_with_budget_on_a_bundle(capsys, bundle):
    code, out, _ = _cli(capsys, "run", bundle, "--budget-ms", 1000, "--threads", 1, "--json")
    assert code == 0
    rep = json.loads(out)
    assert rep["last_run"]["variant"] == "fp32" and rep["last_run"]["deadline_met"] is True
    code, out, _ = _cli(capsys, "run", bundle, "--budget-ms", 1e-5, "--threads", 1)
    assert code == 0 and "variant pruned" in out and "budget met: False" in out


def test_run_with_budget_on_a_plain_model(capsys, mlp_onnx):
    code, out, _ = _cli(capsys, "run", mlp_onnx, "--budget-ms", 1000, "--json")
    assert code == 0 and json.loads(out)["last_run"]["deadline_met"] is True


@pytest.mark.parametrize("bad", ["0", "-3", "nan", "inf"])
def test_bad_budget_is_exit_2(capsys, bundle, mlp_onnx, bad):
    for cmd in ("run", "bench"):
        for model in (bundle, mlp_onnx):
            code, out, err = _cli(capsys, cmd, model, f"--budget-ms={bad}")
            assert code == 2 and "--budget-ms" in err and err.count("\n") == 1


def test_bench_reports_misses_and_mix(capsys, bundle):
    code, out, _ = _cli(capsys, "bench", bundle, "--budget-ms", 1e-5, "--runs", 30, "--warmup", 3, "--threads", 1,
                        "--json")
    assert code == 0
    b = json.loads(out)["budget"]
    # a budget of 10 ns is below every variant: every timed run misses, all on the fastest variant
    assert b["calls"] == 30 and b["misses"] == 30 and b["within_budget"] == 0.0
    assert b["variants"]["pruned"]["calls"] >= 27
    code, out, _ = _cli(capsys, "bench", bundle, "--budget-ms", 1000, "--runs", 30, "--warmup", 3, "--threads", 1)
    assert code == 0 and "budget 1000 ms" in out and "fp32:" in out


def test_bench_plot(capsys, bundle, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    png = tmp_path / "lat.png"
    code, out, _ = _cli(capsys, "bench", bundle, "--budget-ms", 5, "--runs", 40, "--warmup", 2, "--threads", 1,
                        "--plot", png)
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(png).size[0] >= 800
    code, _, err = _cli(capsys, "bench", bundle, "--budget-ms", 5, "--runs", 5, "--plot", png)
    assert code == 2 and "exists" in err
    code, _, _ = _cli(capsys, "bench", bundle, "--runs", 5, "--plot", png, "--force")
    assert code == 0


def test_plain_session_feeds_are_checked(capsys, mlp_onnx, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    code, _, err = _cli(capsys, "run", mlp_onnx, "--budget-ms", 10, "--input", f"x={tmp_path / 'x.npy'}")
    assert code == 2 and "x" in err
