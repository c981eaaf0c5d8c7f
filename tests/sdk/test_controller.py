"""KnobController: fit latency vs a knob and choose the largest setting within a budget; Deadline."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgekit.controller import Deadline, KnobController
from edgekit.errors import InputError


def test_fits_a_linear_cost_and_chooses_the_largest_fitting_setting():
    ctl = KnobController([10, 20, 30, 40, 50], name="steps")
    for k in (10, 30, 50):
        ctl.observe(k, 2.0 + 0.5 * k)  # 2 ms fixed + 0.5 ms per step
    a, b, p = ctl._fit()
    assert abs(a - 2.0) < 0.2 and abs(b * 30 ** p - 15) < 0.5  # exact data: the fit recovers it (1e-1)
    assert ctl.predict(40) == pytest.approx(22.0, rel=0.02)
    # safety 0.9: 0.9 * 25 = 22.5 -> 40 steps (22 ms) fits, 50 (27 ms) does not
    assert ctl.choose(25) == 40
    assert ctl.choose(10) == 10 and ctl.choose(1) == 10  # nothing fits: the smallest setting
    assert ctl.choose(1000) == 50
    assert ctl.choose(0) == 10


def test_fits_a_quadratic_cost_for_resolution():
    ctl = KnobController([64, 96, 128, 160, 224], name="side")
    for side in (64, 128, 224):
        ctl.observe(side, 1.0 + 1e-3 * side ** 2)
    assert ctl._fit()[2] == pytest.approx(2.0, abs=0.1)
    assert ctl.predict(160) == pytest.approx(1.0 + 25.6, rel=0.05)
    assert ctl.choose(30) == 160  # 26.6 ms <= 27 ms; 224 needs 51 ms


def test_recent_samples_win_when_the_device_slows():
    ctl = KnobController([1, 2, 4, 8], window=4)
    for k in (1, 8):
        for _ in range(4):
            ctl.observe(k, k * 1.0)
    assert ctl.choose(10) == 8
    for k in (1, 8):
        for _ in range(4):  # the device now runs 3x slower; the window forgets the old samples
            ctl.observe(k, k * 3.0)
    assert ctl.choose(10) == 2


def test_real_timings_of_an_onnx_model(tmp_path):
    """Rows of a batch as the knob of a real onnxruntime MLP: cost grows with rows; choices respect it."""
    import onnxruntime as ort

    import models

    path = models.save(models.mlp(d_in=256, d_hidden=1024), tmp_path / "m.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    xs = {n: np.zeros((n, 256), np.float32) for n in (16, 64, 256, 1024, 4096)}
    ctl = KnobController(list(xs), name="rows", quantile=0.5)
    ctl.calibrate(lambda n: sess.run(None, {"x": xs[n]}), values=[16, 256, 4096], repeats=5)
    big = ctl.predict(4096)
    assert big > 5 * ctl.predict(16)  # 256x the rows: at least 5x the predicted time (generous)
    assert ctl.choose(big * 10) == 4096
    assert ctl.choose(ctl.predict(16) * 0.5) == 16
    # the chosen setting, run for real, lands within the budget it was chosen for (2x slack for noise)
    budget = ctl.predict(1024) / 0.9 * 1.01
    n = ctl.choose(budget)
    assert n == 1024
    t0 = time.perf_counter()
    sess.run(None, {"x": xs[n]})
    assert (time.perf_counter() - t0) * 1e3 <= 2 * budget


def test_errors():
    with pytest.raises(InputError, match="choices"):
        KnobController([0, 1])
    with pytest.raises(InputError, match="no measurements"):
        KnobController([1, 2]).choose(10)
    ctl = KnobController([1, 2])
    with pytest.raises(InputError, match="latency"):
        ctl.observe(1, -3)
    ctl.observe(1, 1.0)
    with pytest.raises(InputError, match="budget"):
        ctl.choose(-1)
    assert ctl.predict(2) == pytest.approx(2.0)  # one setting seen: proportional cost


def test_deadline_counts_down():
    d = Deadline(50)
    assert 0 < d.remaining_ms() <= 50 and not d.expired()
    time.sleep(0.06)
    assert d.remaining_ms() == 0.0 and d.expired() and d.elapsed_ms() >= 50
    with pytest.raises(InputError):
        Deadline(0)
