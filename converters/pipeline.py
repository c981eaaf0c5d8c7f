"""``edgekit.convert``: a plan of independent variant jobs (source x format x precision x pruning) into a bundle.

The data flow: check the request -> canonical ONNX source -> calibration and held-out validation data, and the
fp32 reference on it -> pruned fp32 sources -> one job per variant (jobs.py: export -> validate -> accuracy retry)
-> the bundle with every variant that was built, the failures recorded beside them, and report.md.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgekit._fs import check_writable, size_of
from edgekit._quiet import captured
from edgekit.bundle import Bundle
from edgekit.bundle_writer import BundleWriter
from edgekit.errors import BackendUnavailable, ConversionError, InputError, MissingExtraError
from edgekit.specs import TensorSpec

from . import exporters, get_exporter
from .accuracy import rank_by_single, retry
from .calibration import load_calibration, n_samples, samples, split, synthetic
from .canonical import canonicalize, io_specs, load_onnx, opset_of
from .jobs import (
    Built,
    Failure,
    JobContext,
    VariantJob,
    background_exports,
    run_job,
    start_background_exports,
    waits_for_background,
)
from .progress import JobProgress
from .prune import PruneSpec, calibration_grams, candidates, parse_prune
from .prune import prune as prune_model
from .quantize import PRECISIONS, check_precision, opset_note
from .shapes import (
    StaticSources,
    check_against_specs,
    check_data_shapes,
    dynamic_inputs,
    parse_input_shapes,
    shapes_of_feed,
    with_shapes,
)
from .validate import compare, run_onnx

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("onnx", "tflite", "coreml")
DEFAULT_QUANTIZE = ("fp32", "fp16", "int8")


@dataclass
class Request:
    """The checked arguments of one conversion (all checked before any work starts)."""

    formats: list[str]
    precisions: list[str]
    prunings: list[PruneSpec]
    input_shapes: dict[str, tuple[int, ...]]
    skipped: list[str] = field(default_factory=list)     # default formats not usable here
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


@dataclass
class Source:
    """The canonical fp32 ONNX every variant is made from."""

    kind: str
    name: str
    file: Path
    canonical: onnx.ModelProto
    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    torch: tuple | None = None


@dataclass
class Data:
    """Calibration data, held-out validation feeds and the fp32 reference outputs on them."""

    calib: dict | None
    feeds: list[dict]
    ref: list
    description: str
    fit_feeds: list[dict] | None      # calibration samples pruning may re-fit on (never the validation ones)


def convert(source: Any, out_dir: str | Path, targets: Sequence[str] | str | None = None,
            quantize: Sequence[str] | str | None = None, prune: Any = None, calibration: Any = None,
            force: bool = False, opset: int | None = None, example_inputs: Any = None,
            cosine_threshold: float = 0.99, top1_threshold: float = 0.98, progress: bool = True,
            calibration_method: str = "minmax", preprocess: Any = None, accuracy_aware: bool = True,
            validation_samples: int = 16, simplify: bool = True, exporter_options: dict | None = None,
            retry_budget_s: float | None = 120.0, boards: Sequence[str] = (),
            fallback_ops: Sequence[str] = (), validation: Any = None, input_shapes: Any = None,
            verbose: bool = False) -> Bundle:
    """Convert ``source`` (an ONNX path or a torch ``nn.Module`` with ``example_inputs``) into a bundle at ``out_dir``.

    Every variant is an independent job: one that fails is recorded in ``bundle.failed`` (and manifest.json,
    report.md) and the bundle holds every variant that was built; :class:`ConversionError` only when none was.
    ``targets`` default: every format whose exporter works here. ``quantize`` default: fp32, fp16 and int8
    (static int8 needs ``calibration``; without it int8-dynamic is built instead). ``prune``: ``0.5``, ``"2:4"``,
    ``"channels:0.3"`` or a list of them (pruned variants are built beside the unpruned ones).
    ``input_shapes``: ``{"images": (1, 3, 320, 320)}`` (or ``["images=1,3,320,320"]``): the shapes formats needing
    static dims (TFLite, Core ML, TVM) are built for; by default those of the validation data. ONNX variants keep
    the source's dynamic dims.
    ``retry_budget_s``: the time budget of each variant's accuracy retry: no attempt starts that is predicted to
    end past it (None: no budget).
    ``preprocess``: how images become inputs (``size=224,mean=..,std=..,layout=NCHW``): used for an image-folder
    ``calibration`` and recorded in the manifest.
    ``validation``: held-out inputs (same forms as ``calibration``) every variant is checked on; by default a
    quarter of the calibration data is held out (random inputs without it).
    ``fallback_ops``: op types forced onto TVM kernels: each target becomes a composite (runtime segments plus
    TVM kernels). A target that lacks an op of the model gets such a composite too, except that a PyTorch
    source is first converted to Core ML or TFLite by that format's own converter (ct.convert, litert-torch;
    recorded as ``exported_from``). ``boards``: board profiles (e.g. ``rpi4``) whose kernels composites carry
    beside the host's. ``verbose``: show the converters' own output (it always goes to the bundle's convert.log).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    req = _check_request(targets, quantize, prune, calibration, preprocess, input_shapes, boards, fallback_ops)
    _check_retry_budget(retry_budget_s)
    check_writable(out_dir, force)
    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as work_s, \
            captured(Path(work_s) / "convert.log", verbose):
        work = Path(work_s)
        src = _load_source(source, example_inputs, opset, simplify, work)
        check_against_specs(req.input_shapes, src.inputs)
        req.notes += [n for p in req.precisions if (n := opset_note(opset_of(src.canonical), p))]
        data = _load_data(src, req, calibration, validation, preprocess, validation_samples)
        thresholds = {"cosine": cosine_threshold, "top1": top1_threshold}
        sources = [("", None, src.path, {})] + [
            _pruned_source(spec, src, work, data, thresholds, accuracy_aware, req.notes) for spec in req.prunings]
        req.meta["validated_shapes"] = {n: list(d) for n, d in shapes_of_feed(data.feeds[0], src.inputs).items()}
        static = _static_sources(req, src, data, work)
        jobs = [VariantJob(label, spec, path, fmt, prec, info) for (label, spec, path, info) in sources
                for fmt in req.formats for prec in req.precisions]
        meta = {"source_kind": src.kind, "thresholds": thresholds, **req.meta}
        with BundleWriter(out_dir, force=force, source=src.file, inputs=src.inputs, outputs=src.outputs,
                          meta=meta) as w, background_exports() as pool:
            ctx = JobContext(writer=w, work=work, feeds=data.feeds, ref=data.ref, inputs=src.inputs,
                             outputs=src.outputs, thresholds=thresholds, calib=data.calib, static=static,
                             formats_static=_static_formats(req.formats, fallback_ops), accuracy_aware=accuracy_aware,
                             retry_budget_s=retry_budget_s, calibration_method=calibration_method,
                             exporter_options=dict(exporter_options or {}), progress=progress,
                             fallback_ops=list(dict.fromkeys(fallback_ops or ())), boards=list(dict.fromkeys(boards)),
                             torch_src=src.torch, notes=req.notes, pool=pool)
            results = _run_jobs(jobs, ctx, progress)
            _write_bundle(w, src, req, data, results, thresholds, time.perf_counter() - t0)
            _flush_std()
            shutil.copyfile(work / "convert.log", w.path_for("convert.log"))     # what the converters printed
    return w.bundle


# ---- the request

def _check_retry_budget(seconds: Any) -> None:
    """None or a finite number of seconds >= 0; anything else is an InputError."""
    if seconds is None:
        return
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
        raise InputError(f"retry_budget_s must be a number of seconds >= 0 (or None), got {seconds!r}")


def _check_request(targets, quantize, prune, calibration, preprocess, input_shapes, boards, fallback_ops) -> Request:
    """Formats, precisions, prunings and shapes, checked before any work (bad input is an InputError)."""
    fmts, skipped = _pick_targets(targets)
    if not fmts:
        raise BackendUnavailable(f"no export format is usable here ({'; '.join(skipped)})")
    notes: list[str] = []
    if quantize is None:
        precs = list(DEFAULT_QUANTIZE)
        if calibration is None:
            precs = ["fp32", "fp16", "int8-dynamic"]
            notes.append("static int8 skipped: no calibration data (pass --calibration DATA); built int8-dynamic")
    else:
        precs = [check_precision(p) for p in _as_list(quantize, "quantize")]
        if "int8" in precs and calibration is None:
            raise InputError("static int8 (--quantize int8) needs calibration data: pass --calibration DATA (a .npz "
                             "with one [N, ...] array per input, or a folder of images), or use int8-dynamic")
    precs.sort(key=PRECISIONS.index)
    items = [] if prune is None else (prune if isinstance(prune, (list, tuple)) else [prune])
    meta: dict[str, Any] = {}
    if preprocess is not None:       # checked now; recorded so apps feed the bundle as it was calibrated
        from .calibration import Preprocess

        meta["preprocess"] = asdict(Preprocess.parse(preprocess))
    if boards or fallback_ops:
        from .tvm_compile import board_target, check_cross_compiler

        for b in dict.fromkeys(boards):
            bt = board_target(b)          # BoardError listing the known boards
            if not bt.is_apple:
                check_cross_compiler(bt.cc, bt.board)
    return Request(fmts, precs, [parse_prune(p) for p in items], parse_input_shapes(input_shapes), skipped, notes,
                   meta)


def _pick_targets(targets) -> tuple[list[str], list[str]]:
    """(formats to build, notes on default formats not usable here); an explicit unusable format is an error."""
    known = exporters()
    if targets is None:
        use, skipped = [], []
        for fmt in DEFAULT_TARGETS:
            exp = known.get(fmt)
            why = "no exporter module in this installation" if exp is None else exp.unavailable_reason()
            if why:
                skipped.append(f"{fmt}: {why}")
            else:
                use.append(fmt)
        return use, skipped
    use = _as_list(targets, "targets")
    for fmt in use:
        why = get_exporter(fmt).unavailable_reason()     # InputError for an unknown format
        if why:
            cls = MissingExtraError if "pip install" in why else BackendUnavailable
            raise cls(f"cannot export to {fmt}: {why}")
    return use, []


def _as_list(v, what: str) -> list[str]:
    if isinstance(v, str):
        v = [x.strip() for x in v.split(",") if x.strip()]
    items = list(v)
    if not items:
        raise InputError(f"{what}: empty list")
    return list(dict.fromkeys(items))


# ---- source and data

def _load_source(source: Any, example_inputs: Any, opset: int | None, simplify: bool, work: Path) -> Source:
    from .torch_source import export_torch, is_torch_module

    torch_src = None
    if is_torch_module(source):
        torch_src = (source, example_inputs)
        kind, name = f"torch {type(source).__name__}", type(source).__name__
        file = export_torch(source, example_inputs, work / "torch_export.onnx", opset=opset)
    elif isinstance(source, (str, Path)):
        file = Path(source)
        kind, name = "onnx", file.name
    else:
        raise InputError(f"source must be an ONNX file path or a torch.nn.Module, got {type(source).__name__}")
    canon = canonicalize(load_onnx(file), opset=opset, simplify=simplify)
    path = work / "canonical.onnx"
    onnx.save(canon, str(path))
    inputs, outputs = io_specs(canon)
    return Source(kind, name, file, canon, path, inputs, outputs, torch_src)


def _load_data(src: Source, req: Request, calibration, validation, preprocess, n_random: int) -> Data:
    """Calibration part, held-out validation feeds (never shared with calibration) and the fp32 reference."""
    calib_part = None
    if validation is not None:
        hold = load_calibration(validation, src.inputs, preprocess, flag="--validation")
        what = f"{n_samples(hold)} validation samples given with the conversion"
        if calibration is not None:
            calib_part = load_calibration(calibration, src.inputs, preprocess)
    elif calibration is not None:
        calib = load_calibration(calibration, src.inputs, preprocess)
        calib_part, hold = split(calib)
        if n_samples(calib) < 4:
            req.notes.append(f"only {n_samples(calib)} calibration samples: validation reuses them")
        what = f"{n_samples(hold)} held-out samples of the calibration data (not used to calibrate)"
    else:
        hold = synthetic(with_shapes(src.inputs, req.input_shapes), n=n_random)
        what = f"{n_random} random inputs (no calibration data given)"
    feeds = samples(hold, src.inputs)
    check_data_shapes(req.input_shapes, shapes_of_feed(feeds[0], src.inputs), "validation")
    if calib_part is not None:
        check_data_shapes(req.input_shapes, shapes_of_feed(samples(calib_part, src.inputs)[0], src.inputs),
                          "calibration")
    fit = samples(calib_part, src.inputs) if calib_part and (validation is not None or
                                                             n_samples(calib_part) >= 4) else None
    if req.prunings and calib_part and fit is None:
        req.notes.append("pruned layers are not re-fitted: with under 4 calibration samples validation reuses them")
    ref = _reference(src.path, feeds)
    return Data(calib_part, feeds, ref, what, fit)


def _reference(path: Path, feeds: list[dict]) -> list:
    """fp32 outputs of the source on the validation feeds (ONNX Runtime's own errors become ConversionErrors)."""
    try:
        return run_onnx(path, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        detail = " ".join(str(exc).split())[:300]
        raise ConversionError(f"the source model does not run on the validation data in ONNX Runtime: {detail}") \
            from None


def _static_formats(formats: list[str], fallback_ops) -> frozenset:
    """Formats whose exporters need static input dims (TVM composites always do)."""
    return frozenset(f for f in formats if fallback_ops or getattr(get_exporter(f), "static_shapes", f != "onnx"))


def _static_sources(req: Request, src: Source, data: Data, work: Path) -> StaticSources:
    """Fixed-shape copies for formats that need them: ``--input-shape``, else the validation data's shapes."""
    dyn = dynamic_inputs(src.inputs)
    from_data = shapes_of_feed(data.feeds[0], src.inputs)
    shapes = {s.name: req.input_shapes.get(s.name, from_data[s.name]) for s in dyn}
    static = StaticSources(shapes, work)
    if shapes and any(f != "onnx" for f in req.formats):
        origin = "--input-shape" if all(s.name in req.input_shapes for s in dyn) else "the validation data"
        req.notes.append(f"static-shape formats are built for {static.describe()} (from {origin}); ONNX variants keep "
                         "the source's dynamic dims")
        req.meta["static_shapes"] = {n: list(s) for n, s in shapes.items()}
    return static


def _pruned_source(spec: PruneSpec, src: Source, work: Path, data: Data, thresholds: dict, accuracy_aware: bool,
                   notes: list[str]) -> tuple[str, PruneSpec, Path, dict]:
    """(label, spec, path of the pruned fp32 ONNX, info), with the accuracy-aware retry on pruned layers.
    Layers are re-fitted on the calibration samples only (:func:`~edgekit.converters.prune.calibration_grams`)."""
    path = work / f"pruned-{spec.label}.onnx"
    grams = calibration_grams(src.canonical, spec, data.fit_feeds) if data.fit_feeds else None
    cache: dict = {}

    def build(skip) -> dict:
        res = prune_model(src.canonical, spec, skip=skip, grams=grams, cache=cache)
        onnx.save(res.model, str(path))
        m = compare(data.ref, run_onnx(path, data.feeds), src.outputs, thresholds["cosine"], thresholds["top1"])
        return dict(m, params=[res.params_before, res.params_after], layers=res.layers, refit=res.refit)

    m = build([])
    if not m["layers"]:
        notes.append(f"prune {spec}: no layer of this model can be pruned that way")
    info: dict = {"params": m["params"], "refit": m["refit"]}
    if not m["passed"] and accuracy_aware and m["layers"]:
        cands = candidates(src.canonical, spec)

        def score_only(c: str) -> float:
            r = build([x for x in cands if x != c])
            if r.get("top1") is not None and r["top1"] < 1.0:
                return r["top1"]
            return r["cosine"] if r.get("cosine") is not None else 1.0 - (r.get("mean_rel_err") or 0.0)

        ranked = rank_by_single(cands, score_only) if len(cands) <= 96 else cands
        m2, kept = retry(ranked, lambda keep: build(keep), max_fraction=0.75, max_tries=8)
        if not m2.get("passed"):
            notes.append(f"prune {spec}: below threshold even with {len(kept)} of {len(cands)} layers left "
                         "unpruned (fine-tune after pruning to recover accuracy)")
        m = build(kept)      # leave the last tried model in place
        info = {"params": m2["params"], "kept_unpruned": kept, "refit": m2["refit"]}
        if not m["layers"]:
            info["pruned_nothing"] = True
            notes.append(f"prune {spec}: every prunable layer was left unpruned to meet the threshold: the "
                         f"{spec.label} variants are the unpruned model")
    return spec.label, spec, path, info


# ---- running the jobs and writing the bundle

def _run_jobs(jobs: list[VariantJob], ctx: JobContext, progress: bool) -> list[Built | Failure]:
    """Every job, in plan order except that those waiting for a background export run last."""
    start_background_exports(jobs, ctx)
    order = sorted(range(len(jobs)), key=lambda i: waits_for_background(jobs[i], ctx))
    results: list[Built | Failure | None] = [None] * len(jobs)
    with JobProgress(len(jobs), enabled=progress) as bar:
        for i in order:
            bar.start(jobs[i].vid)
            results[i] = run_job(jobs[i], ctx)
            bar.done(results[i])
    return [r for r in results if r is not None]


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()


def _write_bundle(w: BundleWriter, src: Source, req: Request, data: Data, results: list, thresholds: dict,
                  total_s: float) -> None:
    """Add every built variant, record the failures, render the report; no variant built is an error."""
    built = [r for r in results if isinstance(r, Built)]
    failed = [r for r in results if isinstance(r, Failure)]
    if not built:
        raise ConversionError("no variant could be built: " + "; ".join(f.line() for f in failed)[:2000])
    rows = []
    for b in built:
        w.add_variant(b.vid, b.fmt, b.precision, b.path, b.inputs, b.outputs, validation=b.validation,
                      pruning=b.pruning, seconds=b.seconds)
        rows.append({"id": b.vid, "format": b.fmt, "precision": b.precision, "pruning": b.pruning,
                     "size": size_of(b.path), "validation": b.validation, "seconds": b.seconds})
    w.meta["failed"] = [f.to_json() for f in failed]
    fp32 = next((r["size"] for r in rows if r["id"] == f"{req.formats[0]}-fp32"), None)
    from .report import render

    w.report = render(src.name, src.kind, src.inputs, src.outputs, rows, req.notes, req.skipped, thresholds,
                      data.description, total_s, fp32, failed=[f.to_json() for f in failed])

