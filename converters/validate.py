"""Validate a variant against the fp32 source on held-out inputs: errors, cosine, top-1 agreement, pass/fail.

Runtime tensors are matched to the source's by position (converters may rename them). Artifacts no backend
can run here are evaluated through their exporter's ``evaluate`` (a graph check, e.g. Core ML on Linux).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import BackendUnavailable, ConversionError, EdgekitError
from edgekit.specs import TensorSpec

Outputs = list[list[np.ndarray]]   # per sample, the outputs in source order


def run_onnx(path: Path, feeds: Sequence[dict]) -> Outputs:
    """Outputs of onnxruntime (CPU) for every feed, in graph output order."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [list(sess.run(None, f)) for f in feeds]


def _by_position(feed: dict, src_inputs: Sequence[TensorSpec], rt_inputs: Sequence[TensorSpec]) -> dict:
    out = {}
    for s, r in zip(src_inputs, rt_inputs):
        x = feed[s.name]
        want = tuple(r.shape)
        if x.ndim == 4 and len(want) == 4 and not _fits(x.shape, want) and _fits(x.transpose(0, 2, 3, 1).shape, want):
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))   # NCHW source, NHWC artifact
        if r.dtype is not None and np.dtype(r.dtype) != x.dtype:
            x = x.astype(r.dtype)
        out[r.name] = x
    return out


def _fits(shape, want) -> bool:
    return len(shape) == len(want) and all(not isinstance(w, int) or w < 0 or w == s for s, w in zip(shape, want))


def run_artifact(path: Path, fmt: str, feeds: Sequence[dict], src_inputs: Sequence[TensorSpec],
                 src_outputs: Sequence[TensorSpec], exporter=None) -> tuple[Outputs, str]:
    """Run ``path`` on every feed: (outputs in source order, "runtime" | "graph-check")."""
    from edgekit.loader import load

    try:
        sess = load(path)
    except BackendUnavailable:
        if exporter is None or not hasattr(exporter, "evaluate"):
            raise
        res = []
        for f in feeds:
            got = exporter.evaluate(path, dict(f))
            vals = list(got.values())
            res.append([_as_src(v, s) for v, s in zip(vals, src_outputs)])
        return res, "graph-check"
    res = []
    rt_out = [o.name for o in sess.outputs]
    for f in feeds:
        got = sess.run(_by_position(f, src_inputs, sess.inputs))
        res.append([_as_src(got[n], s) for n, s in zip(rt_out, src_outputs)])
    sess.close()
    return res, "runtime"


def _as_src(v: np.ndarray, spec: TensorSpec) -> np.ndarray:
    v = np.asarray(v)
    want = tuple(spec.shape)
    if v.ndim == 4 and len(want) == 4 and not _fits(v.shape, want) and _fits(v.transpose(0, 3, 1, 2).shape, want):
        v = v.transpose(0, 3, 1, 2)
    return v


def is_classifier(outputs: Sequence[TensorSpec]) -> bool:
    """A first output of shape [batch, classes] (classes >= 2, float) is read as class scores."""
    if not outputs:
        return False
    s = outputs[0]
    return (np.dtype(s.dtype).kind == "f" and len(s.shape) == 2 and isinstance(s.shape[1], int)
            and s.shape[1] >= 2)


def metrics(ref: Outputs, got: Outputs, classifier: bool) -> dict:
    """max/mean abs error, mean and min per-sample cosine, top-1 agreement (classifiers) over samples."""
    if len(ref) != len(got) or not ref:
        raise ConversionError(f"validation got {len(got)} results for {len(ref)} samples")
    cos, max_abs, sum_abs, n_el, agree, rows = [], 0.0, 0.0, 0, 0, 0
    for r, g in zip(ref, got):
        if len(r) != len(g):
            raise ConversionError(f"variant has {len(g)} outputs, the source {len(r)}")
        rv = np.concatenate([np.asarray(x, np.float64).ravel() for x in r])
        gv = np.concatenate([np.asarray(x, np.float64).ravel() for x in g])
        if rv.shape != gv.shape:
            raise ConversionError(f"variant output size {gv.size} differs from the source's {rv.size}")
        d = np.abs(rv - gv)
        d = np.where(np.isnan(d), np.inf, d)
        max_abs = max(max_abs, float(d.max()) if d.size else 0.0)
        sum_abs += float(d.sum())
        n_el += d.size
        nr, ng = np.linalg.norm(rv), np.linalg.norm(gv)
        cos.append(1.0 if nr == 0 and ng == 0 else float(rv @ gv / (nr * ng)) if nr and ng else 0.0)
        if classifier:
            a = np.asarray(r[0]).reshape(np.asarray(r[0]).shape[0], -1).argmax(-1)
            b = np.asarray(g[0]).reshape(np.asarray(r[0]).shape[0], -1).argmax(-1)
            agree += int((a == b).sum())
            rows += a.size
    cosv = [c if np.isfinite(c) else 0.0 for c in cos]
    return {"cosine": float(np.mean(cosv)), "cosine_min": float(np.min(cosv)), "max_abs": max_abs,
            "mean_abs": sum_abs / max(n_el, 1), "top1": (agree / rows) if classifier and rows else None,
            "n_samples": len(ref)}


def judge(m: dict, cosine_threshold: float, top1_threshold: float) -> dict:
    m = dict(m)
    ok = m["cosine"] >= cosine_threshold and np.isfinite(m["max_abs"])
    if m.get("top1") is not None:
        ok = ok and m["top1"] >= top1_threshold
    m["passed"] = bool(ok)
    return m


def validate(path: Path, fmt: str, feeds: Sequence[dict], ref: Outputs, src_inputs, src_outputs, exporter=None,
             cosine_threshold: float = 0.99, top1_threshold: float = 0.98) -> dict:
    """Full validation record of one artifact."""
    try:
        got, method = run_artifact(path, fmt, feeds, src_inputs, src_outputs, exporter)
    except EdgekitError as exc:
        raise ConversionError(f"{path.name}: the exported {fmt} artifact does not run: {exc}") from None
    m = judge(metrics(ref, got, is_classifier(src_outputs)), cosine_threshold, top1_threshold)
    m["method"] = method
    return m


def compare(ref: Outputs, got: Outputs, src_outputs: Sequence[TensorSpec], cosine_threshold: float = 0.99,
            top1_threshold: float = 0.98) -> dict:
    """Metrics and verdict in one call, for callers that already have the variant's outputs."""
    return judge(metrics(ref, got, is_classifier(src_outputs)), cosine_threshold, top1_threshold)
