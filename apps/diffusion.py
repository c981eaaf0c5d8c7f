"""Generate 8x8 digits with a small UNet DDPM through edgekit, with a DDIM sampler whose step count fits a budget.

The UNet (``apps/data/digits_unet.onnx``, trained by :mod:`edgekit.apps.diffusion_train` on scikit-learn's
digits) runs through :func:`edgekit.load`; the DDIM sampler is numpy. With a budget, a
:class:`~edgekit.controller.KnobController` learns latency vs steps and picks the most steps that fit.
Quality is rated by a classifier trained on the real digits (:class:`DigitsJudge`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import DeadlineError, InputError, ModelLoadError

MODEL_PATH = Path(__file__).parent / "data" / "digits_unet.onnx"
#: training schedule length and betas (must match diffusion_train.py)
T = 1000
BETA_START, BETA_END = 1e-4, 0.02
DEFAULT_STEPS = 50
STEP_CHOICES = (5, 8, 10, 15, 20, 25, 30, 40, 50, 75, 100)
#: fewest steps that still give recognisable digits: a budget that cannot fit them is refused
MIN_STEPS = STEP_CHOICES[0]


def alphas_cumprod() -> np.ndarray:
    betas = np.linspace(BETA_START, BETA_END, T, dtype=np.float64)
    return np.cumprod(1.0 - betas)


@dataclass
class Samples:
    """Generated digits ``images`` [N, 8, 8] in [0, 1], how many steps, and the time taken."""

    images: np.ndarray
    steps: int
    latency_ms: float
    budget_ms: float | None = None
    info: dict = field(default_factory=dict)


class DigitGenerator:
    """The digits UNet opened through edgekit; ``generate(count, steps=... | budget_ms=...)``."""

    def __init__(self, model: str | Path | None = None, backend: str = "auto", threads: int | None = None):
        from edgekit.loader import load

        path = Path(model) if model else MODEL_PATH
        if not path.exists():
            raise ModelLoadError(f"digits UNet not found at {path}; train it with "
                                 "python -m edgekit.apps.diffusion_train")
        opts = {"threads": threads} if threads else {}
        self.session = load(path, backend=backend, **opts)
        self.abar = alphas_cumprod()
        self._controllers: dict[int, object] = {}

    def eps(self, x: np.ndarray, t: int) -> np.ndarray:
        tt = np.full((x.shape[0],), float(t), dtype=np.float32)
        return self.session.run({"x": x.astype(np.float32), "t": tt})["eps"]

    def ddim(self, count: int, steps: int, seed: int = 0, eta: float = 0.0) -> np.ndarray:
        """DDIM sampling (Song et al. 2021) with ``steps`` UNet calls; returns [count, 8, 8] in [0, 1]."""
        _check_int(count, "count", 1, 4096)
        _check_int(steps, "steps", 1, T)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((count, 1, 8, 8)).astype(np.float32)
        ts = np.linspace(T - 1, 0, steps).round().astype(int)
        for i, t in enumerate(ts):
            a_t = self.abar[t]
            a_prev = self.abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
            e = self.eps(x, int(t)).astype(np.float64)
            x0 = np.clip((x - np.sqrt(1 - a_t) * e) / np.sqrt(a_t), -1.0, 1.0)
            e = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)  # noise consistent with the clipped x0
            sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) if i + 1 < len(ts) else 0.0
            noise = rng.standard_normal(x.shape) if sigma > 0 else 0.0
            x = (np.sqrt(a_prev) * x0 + np.sqrt(max(1 - a_prev - sigma**2, 0.0)) * e + sigma * noise)
            x = x.astype(np.float32)
        return ((x[:, 0] + 1.0) / 2.0).clip(0.0, 1.0)

    def controller(self, count: int):
        """A steps controller for batches of ``count``, calibrated on first use (a few short runs)."""
        from edgekit.controller import KnobController

        ctl = self._controllers.get(count)
        if ctl is None:
            ctl = KnobController(STEP_CHOICES, name="steps", power=1.0)
            x = np.zeros((count, 1, 8, 8), np.float32)

            def run_steps(n: float) -> None:  # the UNet calls of an n-step run, without the numpy
                for _ in range(int(n)):
                    self.eps(x, 500)
            ctl.calibrate(run_steps, values=[STEP_CHOICES[0], STEP_CHOICES[2]], repeats=2)
            self._controllers[count] = ctl
        return ctl

    def choose_steps(self, budget_ms: float, count: int) -> int:
        """The most steps predicted to fit ``budget_ms``; :class:`DeadlineError` if even MIN_STEPS cannot."""
        from edgekit.budget import check_budget

        budget = check_budget(budget_ms)
        ctl = self.controller(count)
        if not ctl.fits(MIN_STEPS, budget):
            raise DeadlineError(
                f"budget {budget:g} ms is impossible for {count} digit(s): even {MIN_STEPS} steps are predicted "
                f"to take {ctl.predict(MIN_STEPS):.1f} ms; raise --budget-ms or lower --count")
        return int(ctl.choose(budget))

    def generate(self, count: int = 16, steps: int | None = None, budget_ms: float | None = None,
                 seed: int = 0) -> Samples:
        """``count`` digits with ``steps`` DDIM steps, or as many steps as fit ``budget_ms``."""
        if steps is not None and budget_ms is not None:
            raise InputError("give either steps or budget_ms, not both")
        _check_int(count, "count", 1, 4096)
        if budget_ms is not None:
            steps = self.choose_steps(budget_ms, count)
        steps = DEFAULT_STEPS if steps is None else steps
        t0 = time.perf_counter()
        images = self.ddim(count, steps, seed=seed)
        ms = (time.perf_counter() - t0) * 1e3
        if budget_ms is not None:
            self.controller(count).observe(steps, ms)
        return Samples(images, steps, ms, budget_ms,
                       {"backend": self.session.backend, "met": None if budget_ms is None else ms <= budget_ms})


def _check_int(v, name: str, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise InputError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")


class DigitsJudge:
    """An SVC trained on scikit-learn's real digits rates generated ones: mean confidence, classes covered."""

    def __init__(self, seed: int = 0):
        from edgekit._extras import require

        require("sklearn", purpose="rating generated digits")
        import warnings

        from sklearn.datasets import load_digits
        from sklearn.svm import SVC

        d = load_digits()
        self.clf = SVC(gamma=0.001, C=10.0, probability=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # sklearn >= 1.9 deprecates probability=True
            self.clf.fit(d.data / 16.0, d.target)
        self.real_confidence = float(self.clf.predict_proba(d.data / 16.0).max(axis=1).mean())

    def rate(self, images: np.ndarray) -> dict:
        """``images`` [N, 8, 8] in [0, 1] -> mean_confidence, classes_covered, the predicted labels."""
        x = np.asarray(images, dtype=np.float64).reshape(len(images), 64)
        p = self.clf.predict_proba(x)
        labels = p.argmax(axis=1)
        return {"mean_confidence": float(p.max(axis=1).mean()), "classes_covered": int(len(set(labels.tolist()))),
                "labels": labels.tolist()}


def save_grid(images: np.ndarray, out: str | Path, scale: int = 8, force: bool = False) -> Path:
    """Write ``images`` [N, 8, 8] in [0, 1] as a PNG grid (atomic)."""
    from PIL import Image

    from edgekit._fs import atomic_file

    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    pad = 1
    grid = np.ones((rows * (8 + pad) + pad, cols * (8 + pad) + pad), dtype=np.float64) * 0.5
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (8 + pad): pad + r * (8 + pad) + 8, pad + c * (8 + pad): pad + c * (8 + pad) + 8] = im
    img = Image.fromarray((grid * 255).round().astype(np.uint8), mode="L").resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    out = Path(out)
    with atomic_file(out, force=force) as tmp:
        img.save(tmp, format="PNG")
    return out


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)
