"""``edgekit.convert``: source -> canonical ONNX -> pruned/quantized variants per target -> validated bundle.

Each variant is exported by its format's exporter (converters registry), run on held-out inputs in its real
runtime (or graph-checked where no runtime exists here) and compared with the fp32 source; a variant that
misses its threshold is retried with its most sensitive nodes kept in float (accuracy.py).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import onnx

from edgekit._fs import check_writable, size_of
from edgekit.bundle import Bundle
from edgekit.bundle_writer import BundleWriter
from edgekit.errors import BackendUnavailable, EdgekitError, InputError, MissingExtraError, UnsupportedOpError

from . import exporters, get_exporter
from .accuracy import rank_by_activation, rank_by_single, retry
from .calibration import load_calibration, n_samples, samples, split, synthetic
from .canonical import canonicalize, io_specs, load_onnx
from .prune import PruneSpec, calibration_grams, candidates, parse_prune
from .prune import prune as prune_model
from .quantize import PRECISIONS, check_precision, quantizable_nodes, stem_nodes
from .validate import is_classifier, judge, metrics, run_onnx, validate

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("onnx", "tflite", "coreml")
DEFAULT_QUANTIZE = ("fp32", "fp16", "int8")


def _as_list(v, what: str) -> list[str]:
    if isinstance(v, str):
        v = [x.strip() for x in v.split(",") if x.strip()]
    items = list(v)
    if not items:
        raise InputError(f"{what}: empty list")
    return list(dict.fromkeys(items))


def _pick_targets(targets) -> tuple[list[str], list[str], bool]:
    """(formats to build, notes on skipped ones, explicit?)"""
    known = exporters()
    if targets is None:
        use, skipped = [], []
        for fmt in DEFAULT_TARGETS:
            exp = known.get(fmt)
            if exp is None:
                skipped.append(f"{fmt}: no exporter module in this installation")
                continue
            why = exp.unavailable_reason()
            if why:
                skipped.append(f"{fmt}: {why}")
            else:
                use.append(fmt)
        return use, skipped, False
    use = _as_list(targets, "targets")
    for fmt in use:
        exp = get_exporter(fmt)     # InputError for an unknown format
        why = exp.unavailable_reason()
        if why:
            cls = MissingExtraError if "pip install" in why else BackendUnavailable
            raise cls(f"cannot export to {fmt}: {why}")
    return use, [], True


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name for p in params)     # named explicitly (exporters may reject unknown **options)


def convert(source: Any, out_dir: str | Path, targets: Sequence[str] | str | None = None,
            quantize: Sequence[str] | str | None = None, prune: Any = None, calibration: Any = None,
            force: bool = False, opset: int | None = None, example_inputs: Any = None,
            cosine_threshold: float = 0.99, top1_threshold: float = 0.98, progress: bool = True,
            calibration_method: str = "minmax", preprocess: Any = None, accuracy_aware: bool = True,
            validation_samples: int = 16, simplify: bool = True, exporter_options: dict | None = None,
            retry_budget_s: float | None = 120.0, boards: Sequence[str] = (),
            fallback_ops: Sequence[str] = (), validation: Any = None) -> Bundle:
    """Convert ``source`` (an ONNX path or a torch ``nn.Module`` with ``example_inputs``) into a bundle at ``out_dir``.

    ``targets`` default: every format whose exporter works here. ``quantize`` default: fp32, fp16 and int8
    (static int8 needs ``calibration``; without it int8-dynamic is built instead). ``prune``: ``0.5``, ``"2:4"``,
    ``"channels:0.3"`` or a list of them (pruned variants are built beside the unpruned ones).
    ``retry_budget_s``: no new accuracy-aware retry attempt of a variant starts after this many seconds.
    ``preprocess``: how images become inputs (``size=224,mean=..,std=..,layout=NCHW``): used for an image-folder
    ``calibration`` and recorded in the manifest.
    ``validation``: held-out inputs (same forms as ``calibration``) every variant is checked on; by default a
    quarter of the calibration data is held out (random inputs without it).
    ``fallback_ops``: op types forced onto TVM kernels: each target becomes a composite (runtime segments plus
    TVM kernels). A target that lacks an op of the model gets such a composite too, except that a PyTorch
    source is first converted to Core ML or TFLite by that format's own converter (ct.convert, litert-torch;
    recorded as ``exported_from``). ``boards``: board profiles (e.g. ``rpi4``) whose kernels composites carry
    beside the host's.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    notes: list[str] = []
    # ---- arguments, all checked before any work
    fmts, skipped, explicit = _pick_targets(targets)
    if not fmts:
        raise BackendUnavailable(f"no export format is usable here ({'; '.join(skipped)})")
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
    specs: list[PruneSpec] = []
    if prune is not None:
        items = prune if isinstance(prune, (list, tuple)) else [prune]
        specs = [parse_prune(p) for p in items]
    check_writable(out_dir, force)
    meta: dict[str, Any] = {}
    if preprocess is not None:       # checked now; recorded so apps feed the bundle as it was calibrated
        from dataclasses import asdict

        from .calibration import Preprocess

        meta["preprocess"] = asdict(Preprocess.parse(preprocess))
    opts = dict(exporter_options or {})
    fallback_ops = list(dict.fromkeys(fallback_ops or ()))
    boards = list(dict.fromkeys(boards or ()))
    if boards or fallback_ops:
        from .tvm_compile import board_target, check_cross_compiler

        for b in boards:
            bt = board_target(b)          # BoardError listing the known boards
            if not bt.is_apple:
                check_cross_compiler(bt.cc, bt.board)

    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as work_s:
        work = Path(work_s)
        # ---- source
        from .torch_source import export_torch, is_torch_module

        torch_src = None
        if is_torch_module(source):
            torch_src = (source, example_inputs)
            kind = f"torch {type(source).__name__}"
            src_file = export_torch(source, example_inputs, work / "torch_export.onnx", opset=opset)
            src_name = type(source).__name__
        else:
            if not isinstance(source, (str, Path)):
                raise InputError(f"source must be an ONNX file path or a torch.nn.Module, got {type(source).__name__}")
            src_file = Path(source)
            kind, src_name = "onnx", src_file.name
        raw = load_onnx(src_file)
        canon = canonicalize(raw, opset=opset, simplify=simplify)
        canon_path = work / "canonical.onnx"
        onnx.save(canon, str(canon_path))
        inputs, outputs = io_specs(canon)
        classifier = is_classifier(outputs)

        # ---- calibration and held-out validation data
        calib_part = None
        if validation is not None:
            hold = load_calibration(validation, inputs, preprocess, flag="--validation")
            vdata = f"{n_samples(hold)} validation samples given with the conversion"
            if calibration is not None:
                calib_part = load_calibration(calibration, inputs, preprocess)
        elif calibration is not None:
            calib = load_calibration(calibration, inputs, preprocess)
            calib_part, hold = split(calib)
            if n_samples(calib) < 4:
                notes.append(f"only {n_samples(calib)} calibration samples: validation reuses them")
            vdata = f"{n_samples(hold)} held-out samples of the calibration data (not used to calibrate)"
        else:
            hold = synthetic(inputs, n=validation_samples)
            vdata = f"{validation_samples} random inputs (no calibration data given)"
        feeds = samples(hold, inputs)
        ref = run_onnx(canon_path, feeds)
        thresholds = {"cosine": cosine_threshold, "top1": top1_threshold}

        def check(path: Path, fmt: str, exp=None) -> dict:
            return validate(path, fmt, feeds, ref, inputs, outputs, exp, cosine_threshold, top1_threshold)

        # ---- pruned fp32 sources (re-fitted on calibration data only when validation does not reuse it)
        fit_feeds = samples(calib_part, inputs) if calib_part and (validation is not None or
                                                                   n_samples(calib_part) >= 4) else None
        if specs and calib_part and fit_feeds is None:
            notes.append("pruned layers are not re-fitted: with under 4 calibration samples validation reuses them")
        sources: list[tuple[str, PruneSpec | None, Path, dict]] = [("", None, canon_path, {})]
        for spec in specs:
            sources.append(_pruned_source(spec, canon, work, feeds, ref, classifier, thresholds,
                                          accuracy_aware, notes, fit_feeds))

        # ---- variants
        plan = [(label, spec, p, info, fmt, prec) for (label, spec, p, info) in sources for fmt in fmts
                for prec in precs]
        rows: list[dict] = []
        rank_cache: dict[tuple, list[str]] = {}
        prebuilt: dict[tuple, Future] = {}
        order: dict[str, int] = {}
        built_onnx: dict[tuple, Path] = {}
        stem_cache: dict[str, list[str]] = {}
        # the pool is shut down (waiting for a running export) before the writer removes its temporary folder
        with BundleWriter(out_dir, force=force, source=src_file, inputs=inputs, outputs=outputs,
                          meta={"source_kind": kind, "thresholds": thresholds, **meta}) as w, \
                _background_exports() as pool:
            if not fallback_ops:     # one-run exporters (onnx2tf: a subprocess) start now, beside the other work
                for label, _spec, src_path, _info, fmt, _prec in plan:
                    _prebuilt(pool, get_exporter(fmt), w, label, src_path, fmt, precs, calib_part, prebuilt)
            # variants of background exports are taken last (they wait for it); the bundle keeps the plan's order
            place = {(r[0], r[4], r[5]): i for i, r in enumerate(plan)}
            bar = _bar(sorted(plan, key=lambda r: (r[0], r[4]) in prebuilt and not prebuilt[(r[0], r[4])].done()),
                       progress)
            for label, spec, src_path, pinfo, fmt, prec in bar:
                vid = f"{fmt}-{prec}" + (f"-{label}" if label else "")
                if progress:
                    bar.set_postfix_str(vid)
                exp = get_exporter(fmt)
                fmt_rec, v_in, v_out = fmt, inputs, outputs
                t1 = time.perf_counter()
                art = w.path_for(f"{vid}/model{exp.suffix}")
                kw = dict(opts.get(fmt, {}))
                if _accepts(exp.export, "progress"):
                    kw["progress"] = progress
                if _accepts(exp.export, "calibration_method"):
                    kw["calibration_method"] = calibration_method

                def export(keep: list[str], art=art, exp=exp, prec=prec, src_path=src_path, kw=kw) -> Path:
                    _rm(art)
                    extra = {"keep_float": keep} if keep else {}
                    return Path(exp.export(src_path, art, prec, calibration=calib_part, **kw, **extra))

                try:
                    if fallback_ops:
                        raise UnsupportedOpError(f"forced onto TVM: {', '.join(fallback_ops)}")
                    path = _prebuilt(pool, exp, w, label, src_path, fmt, precs, calib_part, prebuilt
                                     ).result().get(prec) or export([])
                    val = check(path, fmt, exp)
                    if not val["passed"] and prec != "fp32" and accuracy_aware:
                        if not _accepts(exp.export, "keep_float"):
                            notes.append(f"{vid}: below threshold; the {fmt} exporter cannot keep nodes in float, "
                                         "so no accuracy-aware retry")
                        else:
                            key = (label, prec)
                            if key not in rank_cache:
                                onnx_q = path if fmt == "onnx" else built_onnx.get(key)
                                rank_cache[key] = _quant_ranking(src_path, onnx_q, prec, calib_part, feeds, work, vid)
                            ranked = rank_cache[key]

                            def attempt(keep: list[str], fmt=fmt, exp=exp) -> dict:
                                return check(export(keep), fmt, exp)

                            plain = work / f"plain-{vid}"       # the plain build, restored if no retry passes
                            _copy(path, plain)
                            val2, kept = retry(ranked, attempt, time_budget_s=retry_budget_s, baseline=val, patience=2)
                            if val2 and val2.get("passed"):
                                val = dict(val2, kept_float=kept)
                                path = art if art.exists() else path
                            else:
                                _rm(art)
                                _copy(plain, art)
                                path = art
                                val = dict(val, retry_failed=f"below threshold even with {len(kept)} nodes kept "
                                                             "in float; the plain variant is kept")
                                notes.append(f"{vid}: accuracy-aware retry failed ({len(kept)} nodes kept in float "
                                             "at most); kept the plain variant")
                except UnsupportedOpError as exc:
                    # the ONNX route lacks an op: the format's own PyTorch converter (for a module source), else
                    # runtime segments + TVM kernels (also where ops are forced onto TVM)
                    _rm(art)
                    val = None
                    if torch_src is not None and not label and not fallback_ops and fmt in TORCH_CONVERTERS:
                        try:
                            path = _torch_native(fmt, *torch_src, art, prec, inputs, outputs, calib_part)
                            val = dict(check(path, fmt, exp), exported_from=f"torch ({TORCH_CONVERTERS[fmt]})")
                            notes.append(f"{vid}: {' '.join(str(exc).split())[:200]}; exported from the PyTorch "
                                         f"module with {TORCH_CONVERTERS[fmt]} instead")
                        except EdgekitError as exc3:
                            _rm(art)
                            notes.append(f"{vid}: the PyTorch module's own converter ({TORCH_CONVERTERS[fmt]}) "
                                         f"failed too: {' '.join(str(exc3).split())[:200]}")
                    if val is None:
                        try:
                            path, val, v_in, v_out = _composite(w, vid, src_path, fmt, prec, fallback_ops, boards,
                                                                calib_part, check, force)
                        except EdgekitError as exc2:
                            if explicit or fallback_ops:
                                raise
                            skipped.append(f"{vid}: {' '.join(str(exc).split())[:200]}; no TVM composite either: "
                                           f"{' '.join(str(exc2).split())[:200]}")
                            continue
                        vid = f"{vid}+tvm"
                        fmt_rec = "composite"
                except EdgekitError as exc:
                    if explicit or fmt == "onnx":
                        raise
                    _rm(art)
                    skipped.append(f"{vid}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
                    continue
                if pinfo:
                    val.update({k: v for k, v in pinfo.items() if k.startswith("kept") or k in ("params", "refit")})
                if (fmt_rec, prec) in _STEM_FLOAT and kw.get("float_stem", True) and not kw.get("palettize") \
                        and "exported_from" not in val:
                    if label not in stem_cache:
                        stem_cache[label] = stem_nodes(onnx.load(str(src_path)))
                    if stem_cache[label]:
                        val["float_stem"] = stem_cache[label]       # kept float by the recipe, before any retry
                secs = time.perf_counter() - t1
                order[vid] = place[(label, fmt, prec)]
                w.add_variant(vid, fmt_rec, prec, path, v_in, v_out, validation=val,
                              pruning=str(spec) if spec else None, seconds=round(secs, 2))
                if fmt_rec == "onnx" and not val.get("kept_float"):
                    built_onnx[(label, prec)] = path       # other formats rank their nodes on it (no re-quantizing)
                rows.append({"id": vid, "format": fmt_rec, "precision": prec, "pruning": str(spec) if spec else None,
                             "size": size_of(path), "validation": val, "seconds": secs})
            w.variants.sort(key=lambda v: order.get(v.id, 0))
            rows.sort(key=lambda r: order.get(r["id"], 0))
            if not rows:
                raise BackendUnavailable(f"no variant could be built ({'; '.join(skipped)})")
            fp32 = next((r["size"] for r in rows if r["id"] == f"{fmts[0]}-fp32"), None)
            from .report import render

            w.report = render(src_name, kind, inputs, outputs, rows, notes, skipped, thresholds, vdata,
                              time.perf_counter() - t0, fp32)
    return w.bundle


#: formats with an official converter from PyTorch, used for a module source when the ONNX route lacks an op
TORCH_CONVERTERS = {"coreml": "ct.convert", "tflite": "litert-torch"}


def _torch_native(fmt: str, module, example_inputs, art: Path, prec: str, inputs, outputs, calib) -> Path:
    """``art`` converted straight from the PyTorch module by the format's official converter, keeping the ONNX
    source's input/output names (Core ML) and order; static int8 calibrates on ``calib``."""
    from .torch_source import example_args

    args, _ = example_args(module, example_inputs)
    if fmt == "coreml":
        from .export_coreml import export_torch

        return export_torch(module, args, art, prec, input_names=[s.name for s in inputs],
                            output_names=[s.name for s in outputs], force=True)
    from .export_tflite import export_torch

    cal = [tuple(f[s.name] for s in inputs) for f in samples(calib, inputs)] if calib else None
    return export_torch(module, args, art, prec, calibration=cal, force=True)


#: (format, precision) whose exporter keeps an image stem float by default (quantize.stem_nodes)
_STEM_FLOAT = {("onnx", "int8"), ("coreml", "int8"), ("coreml", "int8-dynamic")}


def _composite(w: BundleWriter, vid: str, src_path: Path, fmt: str, prec: str, fallback_ops: list[str],
               boards: list[str], calib, check, force: bool) -> tuple[Path, dict, list, list]:
    """Build ``vid`` as a composite folder (plan.json + runtime segments + TVM kernels) and validate it.

    Returns (folder, validation, inputs, outputs): a composite's shapes are static (TVM kernels are), so its
    specs are the plan's, not the source's dynamic ones.
    """
    import json

    from edgekit.specs import TensorSpec

    from .composite import build_composite

    folder = w.path_for(f"{vid}+tvm/composite")
    plan = build_composite(src_path, folder, fmt, fallback_ops=fallback_ops, boards=["host", *boards],
                           precision=prec, calibration=calib, force=True)
    meta = json.loads(Path(plan).read_text())
    specs_in = [TensorSpec.from_json(x) for x in meta["inputs"]]
    specs_out = [TensorSpec.from_json(x) for x in meta["outputs"]]
    # where no runtime here runs the target's segments (Core ML on Linux), its exporter's graph check does
    return folder, check(folder, "composite", _CompositeGraphCheck(get_exporter(fmt), fmt)), specs_in, specs_out


class _CompositeGraphCheck:
    """``evaluate`` for a composite whose runtime segments only a converter's graph check can run here."""

    def __init__(self, exporter, fmt: str):
        self.exporter, self.fmt = exporter, fmt

    def evaluate(self, path: Path, feeds: dict) -> dict:
        from edgekit import runtimes

        if not hasattr(self.exporter, "evaluate"):
            raise BackendUnavailable(f"no runtime and no graph check for {self.fmt} segments here")
        runner = runtimes.get("composite").open(path, evaluators={self.fmt: self.exporter.evaluate})
        try:
            return runner.run(feeds, None)
        finally:
            runner.close()


def _prebuilt(pool: ThreadPoolExecutor, exp, w: BundleWriter, label: str, src_path: Path, fmt: str,
              precs: list[str], calib, cache: dict) -> Future:
    """Every precision of one source in one call where the exporter can (``export_all``: one converter start).

    Started once per (source, format) on ``pool``; the future's result maps precision -> path (empty when the
    exporter has no ``export_all`` or it failed: precisions are then exported one by one, naming the failing one).
    """
    key = (label, fmt)
    if key not in cache:
        if hasattr(exp, "export_all") and len(precs) > 1:
            suffix = f"-{label}" if label else ""
            outs = {p: w.path_for(f"{fmt}-{p}{suffix}/model{exp.suffix}") for p in precs}
            cache[key] = pool.submit(_export_all, exp, src_path, outs, calib, fmt)
        else:
            cache[key] = Future()
            cache[key].set_result({})
    return cache[key]


@contextlib.contextmanager
def _background_exports():
    """A one-worker pool for exports that run beside the rest; a conversion that fails kills their tool
    processes instead of waiting minutes for them (the pool is then shut down before the bundle's temporary
    folder is removed)."""
    import threading

    from . import toolenv

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-export")
    worker = pool.submit(threading.get_ident).result()     # one worker: every export runs in this thread
    try:
        yield pool
    except BaseException:
        toolenv.cancel(worker)
        raise
    finally:
        pool.shutdown(wait=True)
        toolenv.uncancel(worker)


def _export_all(exp, src_path: Path, outs: dict[str, Path], calib, fmt: str) -> dict[str, Path]:
    try:
        return {p: Path(o) for p, o in exp.export_all(src_path, outs, calibration=calib).items()}
    except EdgekitError as exc:      # retried one precision at a time, which names the failing one
        log.info("%s export_all failed (%s); exporting precisions one by one", fmt, exc)
        for o in outs.values():
            _rm(o)
        return {}


def _bar(plan, progress: bool):
    from tqdm import tqdm

    return tqdm(plan, desc="convert", unit="variant", disable=not progress, leave=True)


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def _rm(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


def _quant_ranking(src_path: Path, onnx_variant: Path | None, prec: str, calib, feeds, work: Path,
                   vid: str) -> list[str]:
    """Nodes of ``src_path`` ranked by the error they add at ``prec`` (measured on an ONNX build of it)."""
    from .quantize import quantize as q

    model = onnx.load(str(src_path))
    if onnx_variant is None:
        onnx_variant = work / f"rank-{vid}.onnx"
        q(src_path, onnx_variant, prec, calib, io_specs(model)[0])
    return rank_by_activation(model, onnx_variant, feeds, quantizable_nodes(model))


def _pruned_source(spec: PruneSpec, canon: onnx.ModelProto, work: Path, feeds, ref, classifier: bool,
                   thresholds: dict, accuracy_aware: bool, notes: list[str], calib_feeds=None):
    """(label, spec, path of the pruned fp32 ONNX, info) with the accuracy-aware retry on pruned layers.
    ``calib_feeds`` (calibration samples, never the validation ``feeds``): the statistics pruning re-fits
    layers with (:func:`~edgekit.converters.prune.calibration_grams`)."""
    path = work / f"pruned-{spec.label}.onnx"
    grams = calibration_grams(canon, spec, calib_feeds) if calib_feeds else None
    cache: dict = {}

    def build(skip) -> dict:
        res = prune_model(canon, spec, skip=skip, grams=grams, cache=cache)
        onnx.save(res.model, str(path))
        m = judge(metrics(ref, run_onnx(path, feeds), classifier), thresholds["cosine"], thresholds["top1"])
        m["params"] = [res.params_before, res.params_after]
        m["layers"] = res.layers
        m["refit"] = res.refit
        return m

    m = build([])
    if not m["layers"]:
        notes.append(f"prune {spec}: no layer of this model can be pruned that way")
    info: dict = {"params": m["params"], "refit": m["refit"]}
    if not m["passed"] and accuracy_aware and m["layers"]:
        cands = candidates(canon, spec)

        def score_only(c: str) -> float:
            r = build([x for x in cands if x != c])
            return r["top1"] if r.get("top1") is not None and r["top1"] < 1.0 else r["cosine"]

        ranked = rank_by_single(cands, score_only) if len(cands) <= 96 else cands
        m2, kept = retry(ranked, lambda keep: build(keep), max_fraction=0.75, max_tries=8)
        if not m2.get("passed"):
            notes.append(f"prune {spec}: below threshold even with {len(kept)} of {len(cands)} layers left "
                         "unpruned (fine-tune after pruning to recover accuracy)")
        build(kept)      # leave the last tried model in place
        info = {"params": m2["params"], "kept_unpruned": kept, "refit": m2["refit"]}
    return spec.label, spec, path, info
