"""Digits DDPM: quality vs DDIM steps vs latency, through edgekit and through raw onnxruntime.

For each step count, samples ``--count`` digits (same seed) and prints the latency through edgekit, the
latency of the same sampler calling onnxruntime directly (ratio edgekit / raw, interleaved in one run), and
the quality rated by an SVC trained on scikit-learn's real digits: mean confidence and classes covered (real
digits score about 0.93 and 10/10). Finally the step count the budget controller picks for a few budgets.

    python benchmarks/diffusion_quality.py [--count 64] [--steps 5 10 20 50 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> int:
    from edgekit.apps import diffusion

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 30, 50, 100])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budgets", type=float, nargs="+", default=[250, 500, 1000, 2000])
    args = p.parse_args()

    import onnxruntime as ort

    gen = diffusion.DigitGenerator(threads=args.threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    raw = ort.InferenceSession(str(diffusion.MODEL_PATH), so, providers=["CPUExecutionProvider"])

    class RawGen(diffusion.DigitGenerator):  # the same sampler, calling onnxruntime directly
        def __init__(self):
            self.abar = diffusion.alphas_cumprod()

        def eps(self, x, t):
            return raw.run(None, {"x": x, "t": np.full((x.shape[0],), float(t), np.float32)})[0]

    rawgen = RawGen()
    judge = diffusion.DigitsJudge()
    print(f"judge on real digits: mean confidence {judge.real_confidence:.3f}")
    print(f"{'steps':>5}  {'edgekit ms':>10}  {'raw ORT ms':>10}  {'ratio':>6}  {'confidence':>10}  {'classes':>7}")
    for steps in args.steps:
        te, tr = [], []
        for _ in range(3):  # interleaved, median of 3
            t0 = time.perf_counter()
            imgs = gen.ddim(args.count, steps, seed=args.seed)
            te.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref = rawgen.ddim(args.count, steps, seed=args.seed)
            tr.append(time.perf_counter() - t0)
        np.testing.assert_allclose(imgs, ref, atol=1e-5)  # same samples either way
        q = judge.rate(imgs)
        me, mr = np.median(te) * 1e3, np.median(tr) * 1e3
        print(f"{steps:>5}  {me:>10.1f}  {mr:>10.1f}  {me / mr:>6.3f}  {q['mean_confidence']:>10.3f}  "
              f"{q['classes_covered']:>5}/10")
    print("\nbudget controller (steps chosen, latency, met):")
    for b in args.budgets:
        try:
            s = gen.generate(args.count, budget_ms=b, seed=args.seed)
            print(f"  {b:>7g} ms -> {s.steps:>3} steps, {s.latency_ms:8.1f} ms, {'met' if s.info['met'] else 'MISSED'}")
        except Exception as exc:  # an impossible budget: say so and go on
            print(f"  {b:>7g} ms -> {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
