"""On an (emulated) Raspberry Pi 4: models and bundles made on the host give the host's outputs.

Run under qemu-aarch64 by boards/qemu/run-tests.sh; on the host they run against the same fixtures.
Tolerances: fp32 kernels differ between x86 (AVX) and aarch64 (NEON) only in summation order, so outputs
(probabilities of small CNN/MLP models) agree within atol 1e-5.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest

import edgekit

pytestmark = pytest.mark.aarch64

ATOL, RTOL = 1e-5, 1e-4
ON_ARM = platform.machine() in ("aarch64", "arm64")


def test_onnx_matches_host(fixtures):
    inputs = np.load(fixtures / "inputs.npz")
    ref = np.load(fixtures / "ref_onnx.npz")
    with edgekit.load(fixtures / "cnn.onnx") as sess:
        assert sess.backend == "onnxruntime"
        got = sess.run({"image": inputs["image"]})
    np.testing.assert_allclose(got["probs"], ref["probs"], rtol=RTOL, atol=ATOL)
    with edgekit.load(fixtures / "mlp.onnx") as sess:  # dynamic batch (3 rows)
        got = sess.run({"x": inputs["x"]})
    name = next(iter(got))
    np.testing.assert_allclose(got[name], ref["mlp_" + name], rtol=RTOL, atol=ATOL)


def test_tflite_matches_host(fixtures, built):
    if "cnn.tflite" not in built["built"]:
        pytest.skip(f"no TFLite fixture: {built['skipped'].get('cnn.tflite')}")
    if importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("ai-edge-litert has no wheel installed for this platform")
    inputs = np.load(fixtures / "inputs.npz")
    ref = np.load(fixtures / "ref_tflite.npz")
    with edgekit.load(fixtures / "cnn.tflite") as sess:
        assert sess.backend == "litert"
        got = sess.run({sess.inputs[0].name: inputs["image"]})
    assert set(got) == set(ref.files)
    for k in got:
        np.testing.assert_allclose(got[k], ref[k], rtol=RTOL, atol=ATOL)


def test_bundle_through_the_facade(fixtures):
    inputs = np.load(fixtures / "inputs.npz")
    ref = np.load(fixtures / "ref_onnx.npz")
    bundle = edgekit.Bundle(fixtures / "cnn.bundle")
    assert bundle.best().id == "onnx-fp32"
    with edgekit.load(fixtures / "cnn.bundle") as sess:
        got = sess.run({"image": inputs["image"]})
    np.testing.assert_allclose(got["probs"], ref["probs"], rtol=RTOL, atol=ATOL)


def _mapped_libraries() -> set[str]:
    """Paths of the shared objects mapped into this process (qemu-user emulates /proc/self/maps)."""
    try:
        text = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return {f[-1] for f in (line.split() for line in text.splitlines()) if len(f) >= 6 and ".so" in f[-1]}


def test_composite_runs_the_boards_tvm_kernels(fixtures, built):
    """A composite made on the host (ONNX segments + TVM kernels for host and rpi4): on the board its rpi4
    (aarch64) kernels run, loaded by the TVM runtime alone, and give the host's outputs. fp32 TVM kernels
    (LLVM, x86 vs NEON) and ONNX Runtime segments differ only in summation order: atol 1e-5."""
    if "bert.composite" not in built["built"]:
        pytest.skip(f"no composite fixture: {built['skipped'].get('bert.composite')}")
    if importlib.util.find_spec("tvm") is None:
        pytest.skip("apache-tvm (the TVM runtime) is not installed here")
    ref = np.load(fixtures / "ref_composite.npz")
    folder = fixtures / "bert.composite"
    plan = json.loads((folder / "plan.json").read_text())
    want = "rpi4" if ON_ARM else "host"
    with edgekit.load(folder) as sess:
        assert sess.backend == "composite"
        runner = sess._runner
        assert runner.board == want and runner.backends == ["onnxruntime", "tvm"]
        got = sess.run({"input_ids": ref["input_ids"]})
        libs = _mapped_libraries()
    np.testing.assert_allclose(got["hidden"], ref["hidden"], rtol=RTOL, atol=ATOL)
    kernels = {b: {str((folder / json.loads((folder / s["artifacts"][b]).read_text())["library"]).resolve())
                   for s in plan["steps"] if s["kind"] == "tvm"} for b in plan["boards"]}
    assert len(kernels[want]) == 2  # Softmax and Erf segments
    if libs:  # the chosen board's libraries are the ones loaded, not the other board's
        assert kernels[want] <= libs, (kernels, sorted(libs))
        assert not kernels["host" if want == "rpi4" else "rpi4"] & libs
    if ON_ARM:
        import tvm.base

        # runtime-only TVM on the board: no compiler library loaded
        assert tvm.base._RUNTIME_ONLY and not any(Path(x).name == "libtvm_compiler.so" for x in libs)


def test_piapp_loop_matches_host(fixtures, tmp_path):
    from edgekit.apps import piapp

    out = tmp_path / "board.jsonl"
    assert piapp.main(["--model", str(fixtures / "cnn.bundle"), "--frames", str(fixtures / "frames"),
                       "--jsonl", str(out), "--top", "3"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    ref = [json.loads(x) for x in (fixtures / "ref_piapp.jsonl").read_text().splitlines()]
    assert [r["source"] for r in got] == [r["source"] for r in ref] and len(got) == 4
    for g, r in zip(got, ref):
        ref_scores = {t["index"]: t["score"] for t in r["top"]}
        got_scores = {t["index"]: t["score"] for t in g["top"]}
        assert got_scores.keys() == ref_scores.keys() or _tied(ref_scores, got_scores)
        for idx in got_scores.keys() & ref_scores.keys():
            assert got_scores[idx] == pytest.approx(ref_scores[idx], abs=ATOL)


def test_piapp_budgeted_bundle(fixtures, tmp_path):
    """With --budget-ms a bundle runs as a budgeted session: every line names the variant that ran."""
    from edgekit.apps import piapp

    out = tmp_path / "budget.jsonl"
    assert piapp.main(["--model", str(fixtures / "cnn.bundle"), "--frames", str(fixtures / "frames"),
                       "--jsonl", str(out), "--budget-ms", "1000"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    ref = [json.loads(x) for x in (fixtures / "ref_piapp.jsonl").read_text().splitlines()]
    assert len(got) == 4 and all(r["variant"] == "onnx-fp32" for r in got)
    for g, r in zip(got, ref):
        assert g["top"][0]["score"] == pytest.approx(r["top"][0]["score"], abs=ATOL)


def test_piapp_http_and_sigterm(fixtures, tmp_path):
    """The looping app serves /stats on 127.0.0.1 and stops cleanly on SIGTERM (sent to this process)."""
    import signal
    import socket
    import threading
    import time
    import urllib.request

    from edgekit.apps import piapp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen: dict = {}

    def poke() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10))
                if stats["frames"] >= 6:
                    seen.update(stats)
                    break
            except OSError:
                pass
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "loop.jsonl"
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    t = threading.Thread(target=poke, daemon=True)
    t.start()
    try:
        rc = piapp.main(["--model", str(fixtures / "cnn.onnx"), "--frames", str(fixtures / "frames"), "--loop",
                         "--interval-ms", "20", "--http", str(port), "--jsonl", str(out)])
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    t.join(10)
    assert rc == 0
    assert seen["frames"] >= 6 and seen["backend"] == "onnxruntime"
    lines = [json.loads(x) for x in out.read_text().splitlines()]  # every line complete
    assert len(lines) >= 6
    ref = [json.loads(x) for x in (fixtures / "ref_piapp.jsonl").read_text().splitlines()]
    for g in lines[:8]:  # frames repeat in order: frame i is the folder's image i % 4
        r = ref[g["frame"] % len(ref)]
        assert g["source"] == r["source"]
        assert g["top"][0]["score"] == pytest.approx(r["top"][0]["score"], abs=ATOL)


def _tied(a: dict, b: dict) -> bool:
    """Top-k sets may differ only by classes whose scores tie within the tolerance."""
    return abs(min(a.values()) - min(b.values())) <= ATOL


def test_board_detected_as_rpi4():
    if os.environ.get("EDGEKIT_QEMU") != "1":
        pytest.skip("the emulated board (Cortex-A72 cpuinfo) exists only under boards/qemu/run-tests.sh")
    from edgekit import boards

    prof = boards.detect()
    assert prof.name == "rpi4" and prof.cpu == "Cortex-A72"
    from edgekit.commands.doctor import diagnose

    rep = diagnose()
    assert rep["board"]["name"] == "rpi4" and rep["machine"] == "aarch64"
    usable = {r["name"] for r in rep["backends"] if r["available"]}
    assert "onnxruntime" in usable


def test_runtime_only_site():
    """The board install has runtimes only: no converter or training stacks."""
    if not ON_ARM:
        pytest.skip("checks the aarch64 site of boards/qemu/run-tests.sh (the host has the converters)")
    present = [m for m in ("torch", "tensorflow", "coremltools", "litert_torch", "onnx2tf", "tf_keras", "jax")
               if importlib.util.find_spec(m) is not None]
    assert present == [], f"converter dependencies installed on the board: {present}"
    assert importlib.util.find_spec("onnxruntime") is not None
    assert Path(edgekit.__file__).parts[-2] == "edgekit"  # the installed wheel, not the source checkout
