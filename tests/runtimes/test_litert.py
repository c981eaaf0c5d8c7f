"""The facade on LiteRT: same results as the raw interpreter, signature binding, checks, thread pool."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import edgekit
from edgekit import InputError


def _raw(path, feeds):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    runner = interp.get_signature_runner("serving_default")
    return runner(**feeds)


def test_litert_matches_raw_interpreter_and_torch(tflite_mlp):
    import torch

    path, module = tflite_mlp
    sess = edgekit.load(path)
    assert sess.backend == "litert" and sess.format == "tflite"
    names = [s.name for s in sess.inputs]
    assert len(names) == 2 and all(s.shape == (2, 16) or s.shape == (2, 10) for s in sess.inputs)
    rng = np.random.default_rng(3)
    feeds = {names[0]: rng.standard_normal((2, 16)).astype(np.float32),
             names[1]: rng.standard_normal((2, 10)).astype(np.float32)}
    got = sess.run(feeds)
    raw = _raw(path, feeds)
    for k in raw:
        np.testing.assert_array_equal(got[k], raw[k])  # same runtime: identical
    with torch.no_grad():
        ref = module(torch.from_numpy(feeds[names[0]]), torch.from_numpy(feeds[names[1]]))
    outs = [got[s.name] for s in sess.outputs]
    np.testing.assert_allclose(outs[0], ref[0].numpy(), rtol=1e-5, atol=1e-5)  # fp32 conversion
    np.testing.assert_allclose(outs[1], ref[1].numpy(), rtol=1e-5, atol=1e-5)


def test_litert_checks_inputs(tflite_mlp):
    path, _ = tflite_mlp
    sess = edgekit.load(path)
    a, b = sess.inputs
    with pytest.raises(InputError, match="missing input"):
        sess.run({a.name: np.zeros(a.shape, np.float32)})
    with pytest.raises(InputError, match="expected dtype float32"):
        sess.run({a.name: np.zeros(a.shape, np.float64), b.name: np.zeros(b.shape, np.float32)})


def test_litert_threads_use_a_pool(tflite_mlp):
    path, _ = tflite_mlp
    sess = edgekit.load(path, threads=1)
    a, b = sess.inputs
    rng = np.random.default_rng(0)
    cases = [{a.name: rng.standard_normal(a.shape).astype(np.float32),
              b.name: rng.standard_normal(b.shape).astype(np.float32)} for _ in range(6)]
    refs = [_raw(path, f) for f in cases]
    errors = []

    def work(i):
        try:
            for _ in range(30):
                out = sess.run(cases[i])
                for k, v in refs[i].items():
                    np.testing.assert_array_equal(out[k], v)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors, errors[0]
