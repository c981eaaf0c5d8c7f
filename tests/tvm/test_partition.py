"""The partitioner: maximal segments in topological order, each a valid ONNX model; chained they equal the model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgekit.converters.composite import _static_model
from edgekit.converters.partition import FALLBACK, RUNTIME, extract_segment, partition_for_target
from edgekit.specs import random_feeds

import models


def _run_chained(model, part, feeds):
    """Run every extracted segment with ONNX Runtime in plan order, handing tensors over by name."""
    env = dict(feeds)
    for seg in part.segments:
        sub = extract_segment(model, seg)
        sess = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        env.update(zip(names, sess.run(names, {i.name: env[i.name] for i in sess.get_inputs()})))
    return env


def _ref(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


@pytest.mark.parametrize("name,forced,kinds", [
    ("bert_block", ["Softmax", "Erf"], [RUNTIME, FALLBACK, RUNTIME, FALLBACK, RUNTIME]),
    ("cnn", ["Softmax"], [RUNTIME, FALLBACK]),
    ("cnn", ["Conv"], [FALLBACK, RUNTIME, FALLBACK, RUNTIME]),
    ("mlp", ["Relu"], [RUNTIME, FALLBACK, RUNTIME]),
    ("branches_model", ["Softmax"], [RUNTIME, FALLBACK, RUNTIME]),
    ("mlp", [], [RUNTIME]),
])
def test_partition_chained_equals_whole_model(name, forced, kinds):
    model = _static_model(getattr(models, name)(), None)
    part = partition_for_target(model, "onnxruntime", forced)
    assert [s.kind for s in part.segments] == kinds
    # every node placed exactly once, segments in topological order
    placed = [i for s in part.segments for i in s.nodes]
    assert sorted(placed) == list(range(len(model.graph.node)))
    for s in part.segments:
        ops = s.op_counts(model)
        if s.kind == FALLBACK:
            assert set(ops) <= set(forced) and set(s.reasons) == set(ops)
        else:
            assert not set(ops) & set(forced)
        onnx.checker.check_model(extract_segment(model, s))
    feeds = random_feeds(_inputs(model), seed=1)
    ref = _ref(model, feeds)
    got = _run_chained(model, part, feeds)
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-6)  # same runtime, same kernels: ~exact


def _inputs(model):
    from edgekit.converters.composite import _spec

    init = {t.name for t in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in init]


def test_parallel_fallback_ops_share_one_segment():
    model = _static_model(models.branches_model(), None)
    part = partition_for_target(model, "onnxruntime", ["Softmax"])
    fb = [s for s in part.segments if s.kind == FALLBACK]
    assert len(fb) == 1 and fb[0].op_counts(model) == {"Softmax": 2}
    assert part.handoffs == 4  # a, b -> TVM; sa, sb -> runtime


def test_segment_io_for_tflite_target():
    # CumSum is not a LiteRT builtin: it alone goes to TVM; hand-offs are exactly h and c
    model = _static_model(models.cumsum_model(), None)
    part = partition_for_target(model, "tflite")
    assert [(s.kind, list(s.op_counts(model))) for s in part.segments] == [
        (RUNTIME, ["MatMul"]), (FALLBACK, ["CumSum"]), (RUNTIME, ["Relu", "MatMul"])]
    assert part.segments[1].inputs == ["h"] and part.segments[1].outputs == ["c"]
    assert "CumSum" in part.segments[1].reasons
