"""Digits DDPM: DDIM samples rated by a classifier trained on real digits, budgeted steps, CLI outputs."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.apps import diffusion
from edgekit.errors import DeadlineError, InputError


@pytest.fixture(scope="module")
def gen():
    return diffusion.DigitGenerator(threads=1)


def test_default_steps_make_recognisable_digits(gen, digit_judge):
    s = gen.generate(64, seed=0)
    assert s.steps == diffusion.DEFAULT_STEPS
    assert s.images.shape == (64, 8, 8) and s.images.dtype == np.float32
    assert s.images.min() >= 0.0 and s.images.max() <= 1.0
    q = digit_judge.rate(s.images)
    # the brief's bar: real digits score ~0.93 with this judge; generated ones must reach 0.8
    assert q["mean_confidence"] >= 0.8, q
    assert q["classes_covered"] >= 8, q


def test_real_digits_rate_high(digit_judge):
    from sklearn.datasets import load_digits

    q = digit_judge.rate(load_digits().images[:200] / 16.0)
    assert q["mean_confidence"] >= 0.85 and q["classes_covered"] == 10


def test_noise_rates_low(digit_judge):
    noise = np.random.default_rng(0).random((64, 8, 8))
    assert digit_judge.rate(noise)["mean_confidence"] < 0.6  # the judge can fail: pure noise is not a digit


def test_same_seed_same_digits(gen):
    a = gen.ddim(4, 10, seed=3)
    b = gen.ddim(4, 10, seed=3)
    np.testing.assert_array_equal(a, b)  # deterministic sampler (eta=0) and seeded start noise


def test_budget_chooses_more_steps_for_more_time(gen):
    ctl = gen.controller(8)
    per_step = ctl.predict(10) / 10
    few = gen.choose_steps(per_step * 12 / ctl.safety, 8)
    many = gen.choose_steps(per_step * 60 / ctl.safety, 8)
    assert diffusion.MIN_STEPS <= few < many
    s = gen.generate(8, budget_ms=per_step * 60 / ctl.safety * 3)
    assert s.steps >= many


def test_impossible_budget_is_refused(gen):
    with pytest.raises(DeadlineError, match="impossible"):
        gen.generate(8, budget_ms=0.01)


def test_bad_arguments(gen):
    with pytest.raises(InputError, match="count"):
        gen.generate(0)
    with pytest.raises(InputError, match="steps"):
        gen.generate(4, steps=0)
    with pytest.raises(InputError, match="either"):
        gen.generate(4, steps=5, budget_ms=100)


def test_cli_writes_png_and_npz(tmp_path):
    from PIL import Image

    from edgekit.cli import main

    out, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    assert main(["app", "diffusion", "--steps", "10", "--count", "9", "--out", str(out), "--npz", str(npz)]) == 0
    im = Image.open(out)
    assert im.format == "PNG" and im.size[0] > 8 * 3
    with np.load(npz) as z:
        assert z["samples"].shape == (9, 8, 8) and 0 <= z["samples"].min() and z["samples"].max() <= 1
    # existing outputs are not overwritten without --force
    assert main(["app", "diffusion", "--steps", "5", "--count", "1", "--out", str(out)]) == 2
