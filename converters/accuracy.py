"""Accuracy-aware retry: when a variant misses its threshold, keep its most sensitive nodes in float and retry.

Sensitivity of quantized nodes: the error a node adds locally (relative error of its output minus that of its
inputs, float model vs variant, on the held-out inputs). Sensitivity of pruned layers: the accuracy lost when
only that layer is pruned. The retry keeps 1, 2, 4, ... of the most sensitive nodes until the variant passes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)


def _expose(model: onnx.ModelProto, names: Sequence[str]) -> tuple[bytes, list[str]]:
    """The model with ``names`` added as graph outputs (those whose type is known)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # types of some tensors stay unknown: they are not exposed
        pass
    types = {vi.name: vi for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    have = {o.name for o in m.graph.output}
    produced = {t for node in m.graph.node for t in node.output} | {i.name for i in m.graph.input}
    exposed = []
    for n in names:
        if n in have:
            exposed.append(n)
        elif n in produced and n in types and types[n].type.tensor_type.elem_type:   # value_info may be stale
            vi = onnx.ValueInfoProto()
            vi.name = n
            vi.type.tensor_type.elem_type = types[n].type.tensor_type.elem_type
            m.graph.output.append(vi)
            exposed.append(n)
    return m.SerializeToString(), exposed


def _activations(model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[dict]) -> dict[str, list]:
    import onnxruntime as ort

    blob, exposed = _expose(model, names)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    out: dict[str, list] = {n: [] for n in exposed}
    for f in feeds:
        for n, v in zip(exposed, sess.run(exposed, f)):
            out[n].append(np.asarray(v, np.float64))
    return out


def _rel_err(a: list, b: list) -> float:
    errs = []
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return float("nan")
        errs.append(np.linalg.norm(x - y) / (np.linalg.norm(x) + 1e-12))
    return float(np.mean(errs)) if errs else float("nan")


def rank_by_activation(float_model: onnx.ModelProto, variant_path: Path, feeds: Sequence[dict],
                       candidates: Sequence[str]) -> list[str]:
    """``candidates`` (node names) ordered by the error each adds locally in the variant, worst first."""
    nodes = {n.name: n for n in float_model.graph.node}
    inits = {i.name for i in float_model.graph.initializer}
    tensors: set[str] = set()
    for c in candidates:
        if c in nodes:
            tensors.update(t for t in nodes[c].output if t)
            tensors.update(t for t in nodes[c].input if t and t not in inits)
    feeds = list(feeds)[:8]
    names = sorted(tensors)
    ref = _activations(float_model, names, feeds)
    try:
        got = _activations(onnx.load(str(variant_path)), names, feeds)
    except Exception as exc:  # a variant that cannot expose tensors: fall back to graph order
        log.info("activation ranking unavailable (%s)", exc)
        return list(candidates)
    scores = {}
    for c in candidates:
        n = nodes.get(c)
        if n is None or n.output[0] not in ref or n.output[0] not in got:
            continue
        out_err = _rel_err(ref[n.output[0]], got[n.output[0]])
        in_errs = [_rel_err(ref[t], got[t]) for t in n.input if t in ref and t in got]
        in_errs = [e for e in in_errs if np.isfinite(e)]
        if np.isfinite(out_err):
            scores[c] = out_err - (max(in_errs) if in_errs else 0.0)
            if out_err < 1e-6:     # exact in the variant already (a stem kept float): keeping it gains nothing
                scores[c] = -np.inf
    ranked = sorted(scores, key=lambda c: -scores[c])
    return [c for c in ranked if scores[c] > -np.inf] + [c for c in candidates if c not in scores] + \
        [c for c in ranked if scores[c] == -np.inf]


def rank_by_single(candidates: Sequence[str], score_only: Callable[[str], float]) -> list[str]:
    """``candidates`` ordered by how much score is lost when only that one is changed, worst first."""
    scores = {c: score_only(c) for c in candidates}
    return sorted(candidates, key=lambda c: scores[c])


def _score(m: dict) -> tuple[float, float]:
    """What a retry tries to raise: top-1 agreement (where measured), then cosine (where measured)."""
    top1, cos = m.get("top1"), m.get("cosine")
    return (1.0 if top1 is None else float(top1), 1.0 if cos is None else float(cos))


def retry(ranked: Sequence[str], attempt: Callable[[list[str]], dict], max_fraction: float = 0.5,
          max_tries: int = 6, time_budget_s: float | None = None, baseline: dict | None = None,
          patience: int | None = None, attempt_cost_s: float = 0.0) -> tuple[dict, list[str]]:
    """Keep the top 1, 2, 4, ... of ``ranked`` until ``attempt(kept)["passed"]``; returns (metrics, kept).

    ``time_budget_s`` caps the whole retry: an attempt starts only if it is predicted to end within it, taking
    each attempt to cost as much as the slowest one so far (at first ``attempt_cost_s``, e.g. what the plain
    build and its validation took), so one slow attempt (a large model's Core ML graph check) cannot run far past
    the budget. With ``baseline`` (the metrics of the variant with nothing kept) and ``patience``, the retry
    also stops after ``patience`` attempts in a row that did not beat the best score so far: keeping more of the
    same nodes in float is then not what the variant lacks.
    """
    import time

    start = time.perf_counter()
    limit = max(1, int(np.ceil(len(ranked) * max_fraction)))
    k, tries, last = 1, 0, ({}, [])
    best, stale, cost = (_score(baseline) if baseline else None), 0, attempt_cost_s
    while k <= limit and tries < max_tries:
        if time_budget_s is not None and time.perf_counter() - start + cost > time_budget_s:
            log.info("accuracy retry stopped after %d tries: an attempt (~%.0f s) would end past the time budget "
                     "of %.0f s", tries, cost, time_budget_s)
            break
        kept = list(ranked[:k])
        t0 = time.perf_counter()
        m = attempt(kept)
        cost = max(cost, time.perf_counter() - t0)
        last = (m, kept)
        if m.get("passed"):
            return last
        tries += 1
        if best is not None and patience:
            if _score(m) > best:
                best, stale = _score(m), 0
            else:
                stale += 1
                if stale >= patience:
                    log.info("accuracy retry stopped after %d tries: no gain in the last %d", tries, patience)
                    break
        if k == limit:
            break
        k = min(k * 2, limit)
    return last
