"""Validate a variant against the fp32 source on held-out inputs: every output judged on its own, pass/fail.

Runtime tensors are matched to the source's by position (converters may rename them). Artifacts no backend
can run here are evaluated through their exporter's ``evaluate`` (a graph check, e.g. Core ML on Linux).

Per output (``metrics``), over the whole validation set:
- integer and bool outputs must match exactly: ``mismatch`` (fraction of differing elements) <= 0;
- float outputs: ``cosine`` per sample, only on samples where the reference has energy (RMS >= 1% of the
  output's largest sample RMS over the set and >= 1e-6: the cosine of two near-zero vectors is noise), and the
  error relative to the output's range over the set (``rel_err`` = max|ref-got| / range, ``mean_rel_err`` =
  mean|ref-got| / range; a range under 1e-4 counts as 1e-4);
- a task metric where the output's shape and values say which task it serves (the ``TASKS`` registry):
  class scores, YOLO-style detections, segmentation maps, text-probability maps, CTC sequences.
``judge`` holds each figure to its named threshold (:class:`Thresholds`); the variant's verdict and figures are
its worst output's, and ``decided_by`` names that output and metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edgekit.errors import BackendUnavailable, ConversionError, EdgekitError
from edgekit.specs import TensorSpec

Outputs = list[list[np.ndarray]]   # per sample, the outputs in source order

#: range of an output over the set below which errors are measured against this absolute scale instead
RANGE_FLOOR = 1e-4
#: a sample has energy when its RMS is >= this fraction of the output's largest sample RMS (and >= ENERGY_FLOOR)
ENERGY_FRACTION = 0.01
ENERGY_FLOOR = 1e-6
#: a row (or pixel) of class scores is decided when top-1 minus top-2 >= this fraction of the output's range
DECIDED_MARGIN = 0.02
#: a detector anchor is confident when its best class score is >= this (YOLO's default confidence)
CONFIDENT = 0.25
#: a text-probability map's pixel is text above this level (the DB text detectors' binarization threshold)
MASK_LEVEL = 0.3
#: the CTC blank index (PaddleOCR, CRNN)
CTC_BLANK = 0


@dataclass(frozen=True)
class Thresholds:
    """What each figure must reach; a figure that is None (not measurable on this set) is not judged."""

    cosine: float = 0.99            # mean per-sample cosine over the samples with energy
    top1: float = 0.98              # top-1 agreement of class scores, on decided rows
    # Errors relative to the output's range over the set, measured on the test models (mlp, cnn, bert_block,
    # classifier_pair, echo_big_small; synthetic data): fp16 max <= 5e-4, mean <= 1e-4 (a real text map's fp16: max
    # 0.07); good dynamic / static int8 max <= 0.25, mean <= 0.009; a dynamic int8 whose small output went wrong
    # (cosine 0.949): mean 0.043; planted bugs (zeroed, negated, swapped outputs): mean >= 0.1. The max bound only
    # catches gross faults (a good int8's worst element is several quantization steps); the mean bound is the tight one.
    rel_err: float = 0.5
    mean_rel_err: float = 0.03
    mismatch: float = 0.0           # integer / bool outputs: fraction of differing elements
    pixel_agreement: float = 0.98   # segmentation: per-pixel argmax agreement on decided pixels
    mask_iou: float = 0.9           # text map: IoU of the masks above MASK_LEVEL over the set
    det_class: float = 0.95         # detector: anchors with the same confident class / confident anchors
    box_iou: float = 0.9            # detector: mean IoU of the boxes of the reference's confident anchors
    sequence: float = 0.9           # CTC: fraction of greedy-decoded sequences that are identical


_AT_LEAST = ("cosine", "top1", "pixel_agreement", "mask_iou", "det_class", "box_iou", "sequence")
_AT_MOST = ("rel_err", "mean_rel_err", "mismatch")
#: tasks whose output's worst element is not judged (``rel_err`` is still reported): in a map, a few pixels at a
#: region's edge may flip while the regions themselves agree (PP-OCRv4's text map at int8: max error 0.99 on one
#: pixel, mask IoU 0.976, mean error 0.0024); the task metric, cosine and mean error judge the map
_MAX_NOT_JUDGED = frozenset({"text-map", "segmentation"})


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


# ---- task metrics: a registry of (matches, score) by task name; the first task whose ``matches`` holds wins

#: matches(reference samples of one output) -> bool; score(ref, got, range) -> {figure: value or None}
Matcher = Callable[[list[np.ndarray]], bool]
Scorer = Callable[[list[np.ndarray], list[np.ndarray], float], dict]
TASKS: dict[str, tuple[Matcher, Scorer]] = {}


def task(name: str, matches: Matcher) -> Callable[[Scorer], Scorer]:
    """Register ``score`` as the task metric of outputs whose reference ``matches``."""
    def register(score: Scorer) -> Scorer:
        TASKS[name] = (matches, score)
        return score
    return register


def infer_task(ref: list[np.ndarray]) -> str | None:
    """The task an output serves, from its reference samples' shape and values (None: no task metric)."""
    if ref[0].dtype.kind != "f" or ref[0].size == 0:
        return None
    return next((name for name, (matches, _) in TASKS.items() if matches(ref)), None)


def _within(ref: list[np.ndarray], lo: float, hi: float) -> bool:
    return all(float(np.nanmin(a)) >= lo - 1e-6 and float(np.nanmax(a)) <= hi + 1e-6 for a in ref)


def _is_ctc(ref: list[np.ndarray]) -> bool:
    """[N, T, V], V >= 10, rows of probabilities or log-probabilities."""
    if ref[0].ndim != 3 or ref[0].shape[2] < 10:
        return False
    if _within(ref, 0.0, 1.0):
        return all(np.allclose(a.sum(-1), 1.0, atol=1e-3) for a in ref)
    return _within(ref, -np.inf, 0.0) and all(np.allclose(np.exp(a).sum(-1), 1.0, atol=1e-3) for a in ref)


def _greedy(a: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [N, T, V]: best class per step, repeats merged, blanks dropped."""
    seqs = []
    for row in a.argmax(-1):
        keep = np.r_[True, row[1:] != row[:-1]] & (row != CTC_BLANK)
        seqs.append(tuple(int(c) for c in row[keep]))
    return seqs


@task("ctc", _is_ctc)
def _sequences(ref: list[np.ndarray], got: list[np.ndarray], scale: float) -> dict:
    same = [s == t for a, b in zip(ref, got) for s, t in zip(_greedy(a), _greedy(b))]
    return {"sequence": float(np.mean(same))}


def _features_last(a: np.ndarray) -> np.ndarray:
    """A detector output as [N, anchors, 4 + classes] (the feature axis is the shorter of the last two)."""
    return a.transpose(0, 2, 1) if a.shape[1] < a.shape[2] else a


#: the fewest anchors a detector output has (YOLO at 160 x 160: 525)
MIN_ANCHORS = 64


def _is_detector(ref: list[np.ndarray]) -> bool:
    """[N, 4 + C, anchors] or [N, anchors, 4 + C]: >= MIN_ANCHORS anchors, more than features, scores in [0, 1]."""
    a = ref[0]
    if a.ndim != 3 or min(a.shape[1:]) < 5 or a.shape[1] == a.shape[2] or max(a.shape[1:]) < MIN_ANCHORS:
        return False
    return _within([_features_last(x)[..., 4:] for x in ref], 0.0, 1.0)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes given as [..., (cx, cy, w, h)]."""
    def corners(x):
        half = np.abs(x[..., 2:4]) / 2
        return x[..., :2] - half, x[..., :2] + half

    (a0, a1), (b0, b1) = corners(a), corners(b)
    inter = np.prod(np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None), -1)
    union = np.prod(a1 - a0, -1) + np.prod(b1 - b0, -1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


@task("detector", _is_detector)
def _detections(ref: list[np.ndarray], got: list[np.ndarray], scale: float) -> dict:
    """Class agreement: anchors where the reference is confident and the variant picks the same class with at
    least half the confidence, over those anchors plus the ones only the variant is confident about; box IoU:
    mean over the reference's confident anchors."""
    hits, count, ious = 0, 0, []
    for a, b in zip(ref, got):
        a, b = _features_last(a), _features_last(b)
        sa, sb = a[..., 4:].max(-1), b[..., 4:].max(-1)
        conf = sa >= CONFIDENT
        same = a[..., 4:].argmax(-1) == b[..., 4:].argmax(-1)
        hits += int((conf & same & (sb >= CONFIDENT / 2)).sum())
        count += int(conf.sum() + ((sb >= CONFIDENT) & (sa < CONFIDENT / 2)).sum())
        ious.append(_iou(a[..., :4][conf], b[..., :4][conf]))
    iou = np.concatenate(ious)
    return {"det_class": hits / count if count else None, "box_iou": float(iou.mean()) if iou.size else None}


def _agreement(ref: list[np.ndarray], got: list[np.ndarray], scale: float, axis: int) -> float | None:
    """Argmax agreement along ``axis`` on the decided positions (top-1 minus top-2 >= DECIDED_MARGIN x range)."""
    agree = n = 0
    for a, b in zip(ref, got):
        top2 = np.sort(a, axis=axis).take([-1, -2], axis=axis)
        decided = (top2.take(0, axis=axis) - top2.take(1, axis=axis)) >= DECIDED_MARGIN * scale
        agree += int(((a.argmax(axis) == b.argmax(axis)) & decided).sum())
        n += int(decided.sum())
    return agree / n if n else None


@task("classifier", lambda ref: ref[0].ndim == 2 and ref[0].shape[1] >= 2)
def _classes(ref: list[np.ndarray], got: list[np.ndarray], scale: float) -> dict:
    return {"top1": _agreement(ref, got, scale, 1)}


@task("segmentation", lambda ref: ref[0].ndim == 4 and ref[0].shape[1] >= 2)
def _pixels(ref: list[np.ndarray], got: list[np.ndarray], scale: float) -> dict:
    return {"pixel_agreement": _agreement(ref, got, scale, 1)}


@task("text-map", lambda ref: ref[0].ndim == 4 and ref[0].shape[1] == 1 and _within(ref, 0.0, 1.0))
def _masks(ref: list[np.ndarray], got: list[np.ndarray], scale: float) -> dict:
    inter = sum(int(((a > MASK_LEVEL) & (b > MASK_LEVEL)).sum()) for a, b in zip(ref, got))
    union = sum(int(((a > MASK_LEVEL) | (b > MASK_LEVEL)).sum()) for a, b in zip(ref, got))
    return {"mask_iou": inter / union if union else None}


# ---- figures of one output, then of the variant

def _pair(a: np.ndarray, b: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        if a.size != b.size:
            raise ConversionError(f"variant output {name!r} has shape {list(b.shape)}, the source's {list(a.shape)}")
        b = b.reshape(a.shape)
    return a, b


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in float64; NaN (on one side only) counts as infinite."""
    d = np.abs(a - b)
    return np.where(np.isnan(d), np.inf, d)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    c = float(a.ravel() @ b.ravel() / (na * nb)) if na and nb else 0.0
    return c if np.isfinite(c) else 0.0


def _int_figures(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """Integer / bool output: fraction of elements that differ (floats from the variant are rounded first)."""
    diff = n = 0
    d_max, d_sum = 0.0, 0.0
    for a, b in zip(ref, got):
        b = np.rint(b) if b.dtype.kind == "f" else b
        d = _abs_diff(a.astype(np.float64), b.astype(np.float64))
        diff += int((d != 0).sum())
        n += d.size
        d_max, d_sum = max(d_max, float(d.max()) if d.size else 0.0), d_sum + float(d.sum())
    return {"kind": "int", "mismatch": diff / max(n, 1), "max_abs": d_max, "mean_abs": d_sum / max(n, 1)}


def _float_figures(ref: list[np.ndarray], got: list[np.ndarray], task_name: str | None) -> dict:
    """Float output: cosine on samples with energy, errors relative to the range over the set, task figures."""
    ref = [a.astype(np.float64) for a in ref]
    got = [b.astype(np.float64) for b in got]
    finite = [a[np.isfinite(a)] for a in ref]
    lo = min((float(a.min()) for a in finite if a.size), default=0.0)
    hi = max((float(a.max()) for a in finite if a.size), default=0.0)
    scale = max(hi - lo, RANGE_FLOOR)
    both = [np.isnan(a) & np.isnan(b) for a, b in zip(ref, got)]     # NaN in source and variant: equal
    ref = [np.where(n, 0.0, a) for a, n in zip(ref, both)]
    got = [np.where(n, 0.0, b) for b, n in zip(got, both)]
    diffs = [_abs_diff(a, b) for a, b in zip(ref, got)]
    n = sum(d.size for d in diffs)
    max_abs = max((float(d.max()) for d in diffs if d.size), default=0.0)
    mean_abs = sum(float(d.sum()) for d in diffs) / max(n, 1)
    rms = [float(np.sqrt(np.mean(np.square(np.nan_to_num(a))))) if a.size else 0.0 for a in ref]
    floor = max(ENERGY_FRACTION * max(rms), ENERGY_FLOOR)
    cos = [_cos(a, b) for a, b, e in zip(ref, got, rms) if e >= floor]
    fig = {"kind": "float", "task": task_name, "cosine": float(np.mean(cos)) if cos else None,
           "cosine_min": float(np.min(cos)) if cos else None, "n_energy": len(cos), "max_abs": max_abs,
           "mean_abs": mean_abs, "range": [lo, hi], "rel_err": max_abs / scale, "mean_rel_err": mean_abs / scale}
    if task_name is not None:
        fig.update(TASKS[task_name][1](ref, got, scale))
    return fig


def _names(src_outputs, count: int) -> list[str]:
    names = [s.name for s in src_outputs] if isinstance(src_outputs, Sequence) else []
    return names[:count] + [f"output{i}" for i in range(len(names), count)]


def metrics(ref: Outputs, got: Outputs, src_outputs: Sequence[TensorSpec] | None = None,
            tasks: Mapping[str, str | None] | None = None) -> dict:
    """Figures of every output on its own (``outputs``) and the variant's worst figures.

    ``src_outputs`` names the outputs (a bool, from older callers, is read as no names). ``tasks`` overrides the
    inferred task of an output by name (None: no task metric, e.g. an embedding that is not class scores).
    """
    if len(ref) != len(got) or not ref:
        raise ConversionError(f"validation got {len(got)} results for {len(ref)} samples")
    if any(len(r) != len(g) for r, g in zip(ref, got)):
        raise ConversionError(f"variant has {len(got[0])} outputs, the source {len(ref[0])}")
    outputs = {}
    for k, name in enumerate(_names(src_outputs, len(ref[0]))):
        pairs = [_pair(r[k], g[k], name) for r, g in zip(ref, got)]
        r_k, g_k = [p[0] for p in pairs], [p[1] for p in pairs]
        if r_k[0].dtype.kind in "biu":
            outputs[name] = _int_figures(r_k, g_k)
        else:
            t = tasks[name] if tasks is not None and name in tasks else infer_task(r_k)
            outputs[name] = _float_figures(r_k, g_k, t)
    return _summary(outputs, len(ref))


def _summary(outputs: dict[str, dict], n_samples: int) -> dict:
    """The variant's figures: the worst over its outputs (None where no output measures that figure)."""
    def worst(key: str, pick: Callable):
        vals = [f[key] for f in outputs.values() if f.get(key) is not None]
        return pick(vals) if vals else None

    return {"cosine": worst("cosine", min), "cosine_min": worst("cosine_min", min),
            "max_abs": worst("max_abs", max), "mean_abs": worst("mean_abs", max), "top1": worst("top1", min),
            "n_samples": n_samples, "task": {n: f["task"] for n, f in outputs.items() if f.get("task")},
            "outputs": outputs}


# ---- verdicts

def _slack(metric: str, value: float, limit: float) -> float:
    """How far ``value`` is inside its threshold, on a common scale: 1 = perfect, 0 = at the limit, < 0 fails."""
    if not np.isfinite(value):
        return -np.inf
    if metric in _AT_LEAST:
        return (value - limit) / max(1.0 - limit, 1e-9)
    return (limit - value) / limit if limit > 0 else (1.0 if value <= limit else -1.0 - value)


def _verdict(fig: dict, th: Thresholds) -> dict:
    """``fig`` with ``passed``, ``failed`` (metrics below their threshold) and ``decided_by`` (its worst metric)."""
    limits = asdict(th)
    skip = {"rel_err"} if fig.get("task") in _MAX_NOT_JUDGED else set()
    checks = [(_slack(k, fig[k], limits[k]), k) for k in _AT_LEAST + _AT_MOST
              if fig.get(k) is not None and k not in skip]
    fig = dict(fig)
    fig["failed"] = [k for s, k in checks if s < 0]
    fig["passed"] = not fig["failed"]
    fig["decided_by"], fig["slack"] = (min(checks)[1], min(checks)[0]) if checks else (None, 1.0)
    return fig


def judge(m: dict, cosine_threshold: float | None = None, top1_threshold: float | None = None,
          thresholds: Thresholds | None = None) -> dict:
    """``m`` (from :func:`metrics`) with every output's verdict, ``passed`` and ``decided_by`` (the worst output and
    metric: {output, metric, value, threshold}). The two thresholds given override those of ``thresholds``."""
    th = thresholds or Thresholds()
    th = replace(th, cosine=th.cosine if cosine_threshold is None else cosine_threshold,
                 top1=th.top1 if top1_threshold is None else top1_threshold)
    m = dict(m)
    m["outputs"] = {name: _verdict(f, th) for name, f in m["outputs"].items()}
    name, fig = min(m["outputs"].items(), key=lambda kv: kv[1]["slack"])
    metric = fig["decided_by"]
    m["decided_by"] = {"output": name, "metric": metric, "value": fig.get(metric),
                       "threshold": asdict(th).get(metric)}
    m["passed"] = all(f["passed"] for f in m["outputs"].values())
    m["thresholds"] = asdict(th)
    return m


def compare(ref: Outputs, got: Outputs, src_outputs: Sequence[TensorSpec], cosine_threshold: float = 0.99,
            top1_threshold: float = 0.98, thresholds: Thresholds | None = None,
            tasks: Mapping[str, str | None] | None = None) -> dict:
    """Metrics and verdict in one call, for callers that already have the variant's outputs."""
    return judge(metrics(ref, got, src_outputs, tasks), cosine_threshold, top1_threshold, thresholds)


def validate(path: Path, fmt: str, feeds: Sequence[dict], ref: Outputs, src_inputs, src_outputs, exporter=None,
             cosine_threshold: float = 0.99, top1_threshold: float = 0.98, thresholds: Thresholds | None = None,
             tasks: Mapping[str, str | None] | None = None) -> dict:
    """Full validation record of one artifact (:func:`compare` of its outputs, plus ``method``)."""
    try:
        got, method = run_artifact(path, fmt, feeds, src_inputs, src_outputs, exporter)
    except EdgekitError as exc:
        raise ConversionError(f"{path.name}: the exported {fmt} artifact does not run: {exc}") from None
    m = compare(ref, got, src_outputs, cosine_threshold, top1_threshold, thresholds, tasks)
    m["method"] = method
    return m
