"""One variant of a conversion as an independent job: export -> validate -> accuracy retry, failures confined to it.

A job either returns a :class:`Built` variant (validated or not) or a :class:`Failure` naming the variant, the stage
and the error; it never aborts the other jobs. Only bad user input (``InputError``) propagates, since every other
job would meet it too. Where the ONNX route lacks an op, a job falls back to the format's own PyTorch converter
(module sources) or to a TVM composite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edgekit.bundle_writer import BundleWriter
from edgekit.errors import ConversionError, EdgekitError, InputError, UnsupportedOpError
from edgekit.specs import TensorSpec

from . import get_exporter
from .accuracy import rank_by_activation, retry
from .canonical import io_specs
from .prune import PruneSpec
from .quantize import quantizable_nodes, stem_nodes
from .validate import validate

log = logging.getLogger(__name__)

#: formats with an official converter from PyTorch, used for a module source when the ONNX route lacks an op
TORCH_CONVERTERS = {"coreml": "ct.convert", "tflite": "litert-torch"}
#: (format, precision) whose exporter keeps an image stem float by default (quantize.stem_nodes)
STEM_FLOAT = {("onnx", "int8"), ("onnx", "int8-dynamic"), ("coreml", "int8"), ("coreml", "int8-dynamic")}


@dataclass(frozen=True)
class VariantJob:
    """What to build: one source (pruned or not, shapes fixed where the format needs) x format x precision."""

    label: str                   # pruning label, "" for the unpruned source
    spec: PruneSpec | None
    source: Path                 # the fp32 ONNX this variant is made from
    fmt: str
    prec: str
    prune_info: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def vid(self) -> str:
        return f"{self.fmt}-{self.prec}" + (f"-{self.label}" if self.label else "")


@dataclass
class Built:
    """A variant that was exported; ``validation['passed']`` says whether it met the thresholds."""

    vid: str
    fmt: str                     # the recorded format ("composite" for runtime segments + TVM kernels)
    path: Path
    validation: dict
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"
    pruning: str | None = None
    seconds: float = 0.0


@dataclass
class Failure:
    """A variant that could not be built: where it failed and why (recorded in manifest.json and report.md)."""

    variant: str
    stage: str
    error: str                   # the exception's class name
    message: str
    node: str | None = None
    edgekit_error: bool = True   # False: a library raised something edgekit did not turn into an EdgekitError

    @classmethod
    def of(cls, vid: str, exc: BaseException) -> Failure:
        return cls(variant=vid, stage=getattr(exc, "edgekit_stage", "export"), error=type(exc).__name__,
                   message=" ".join(str(exc).split())[:600] or type(exc).__name__,
                   node=getattr(exc, "node", None), edgekit_error=isinstance(exc, EdgekitError))

    def to_json(self) -> dict:
        d = {"variant": self.variant, "stage": self.stage, "error": self.error, "message": self.message}
        if self.node:
            d["node"] = self.node
        if not self.edgekit_error:
            d["unexpected"] = True
        return d

    def line(self) -> str:
        return f"{self.variant}: failed at {self.stage}: {self.error}: {self.message}"


@dataclass
class JobContext:
    """What every job of one conversion shares: data, reference, options, the bundle writer and caches."""

    writer: BundleWriter
    work: Path
    feeds: list[dict]
    ref: list
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    thresholds: dict
    calib: dict | None
    static: Callable[[Path], Path]
    formats_static: frozenset
    accuracy_aware: bool = True
    retry_budget_s: float | None = 120.0
    calibration_method: str = "minmax"
    exporter_options: dict = field(default_factory=dict)
    progress: bool = False
    fallback_ops: list[str] = field(default_factory=list)
    boards: list[str] = field(default_factory=list)
    torch_src: tuple | None = None
    notes: list[str] = field(default_factory=list)
    pool: ThreadPoolExecutor | None = None
    prebuilt: dict = field(default_factory=dict)
    rankings: dict = field(default_factory=dict)
    built_onnx: dict = field(default_factory=dict)
    stems: dict = field(default_factory=dict)

    def check(self, path: Path, fmt: str, exp=None) -> dict:
        return validate(path, fmt, self.feeds, self.ref, self.inputs, self.outputs, exp,
                        self.thresholds["cosine"], self.thresholds["top1"])


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Tag an exception raised inside with the job stage it came from (kept by the first, innermost tag)."""
    try:
        yield
    except Exception as exc:
        if not hasattr(exc, "edgekit_stage"):
            with contextlib.suppress(AttributeError, TypeError):
                exc.edgekit_stage = name
        raise


def run_job(job: VariantJob, ctx: JobContext) -> Built | Failure:
    """Build, validate and (if needed) retry one variant; any failure but bad user input becomes a Failure."""
    t0 = time.perf_counter()
    try:
        built = _build(job, ctx)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a job's failure, whatever raised it, must not end the others
        log.info("%s failed: %s", job.vid, exc, exc_info=True)
        return Failure.of(job.vid, exc)
    built.seconds = round(time.perf_counter() - t0, 2)
    built.precision = built.validation.pop("precision", job.prec)
    built.pruning = str(job.spec) if job.spec else None
    _annotate(built, job, ctx)
    return built


def _build(job: VariantJob, ctx: JobContext) -> Built:
    exp = get_exporter(job.fmt)
    art = ctx.writer.path_for(f"{job.vid}/model{exp.suffix}")
    with stage("shapes"):
        src = ctx.static(job.source) if job.fmt in ctx.formats_static else job.source
    try:
        if ctx.fallback_ops:
            raise UnsupportedOpError(f"forced onto TVM: {', '.join(ctx.fallback_ops)}")
        try:
            path, val = _export_and_check(job, ctx, exp, src, art)
        except ConversionError as exc:   # a static int8 build that does not run: dynamic int8 may
            dyn = _dynamic_instead(job, ctx, exp, src, art, {"error": exc}) \
                if job.prec == "int8" and ctx.accuracy_aware and not isinstance(exc, UnsupportedOpError) else None
            if dyn is None:
                raise
            path, val = dyn
    except UnsupportedOpError as exc:
        _rm(art)
        with stage("fallback"):
            return _fallback(job, ctx, exc, src, art)
    v_in, v_out = io_specs(onnx.load(str(src), load_external_data=False))
    return Built(job.vid, job.fmt, path, val, v_in, v_out)


def _export_and_check(job: VariantJob, ctx: JobContext, exp, src: Path, art: Path) -> tuple[Path, dict]:
    """Export (or take the background build), validate, and retry where the variant misses its thresholds."""
    t0 = time.perf_counter()
    with stage("export"):
        path = _prebuilt(job, ctx, src).result().get(job.prec)
        cost_from = time.perf_counter() if path else t0      # a background build's time is not known here
        path = path or _export(job, ctx, exp, src, art, [])
    with stage("validate"):
        val = ctx.check(path, job.fmt, exp)
    if not val["passed"] and job.prec != "fp32" and ctx.accuracy_aware:
        with stage("retry"):
            path, val = _retry(job, ctx, exp, src, art, path, val, time.perf_counter() - cost_from)
    return path, val


#: ``_export``'s calibration default: the conversion's own data
_CONTEXT_CALIBRATION: dict = {}


def _export(job: VariantJob, ctx: JobContext, exp, src: Path, art: Path, keep: list[str],
            calibration: dict | None = _CONTEXT_CALIBRATION) -> Path:
    """``job`` exported to ``art`` with ``keep`` nodes in float, on the conversion's calibration data (or the
    ``calibration`` given, None for none)."""
    _rm(art)
    kw = dict(ctx.exporter_options.get(job.fmt, {}))
    if _accepts(exp.export, "progress"):
        kw["progress"] = ctx.progress
    if _accepts(exp.export, "calibration_method"):
        kw["calibration_method"] = ctx.calibration_method
    if keep:
        kw["keep_float"] = keep
    calib = ctx.calib if calibration is _CONTEXT_CALIBRATION else calibration
    return Path(exp.export(src, art, job.prec, calibration=calib, **kw))


def _retry(job: VariantJob, ctx: JobContext, exp, src: Path, art: Path, path: Path, val: dict,
           cost_s: float = 0.0) -> tuple[Path, dict]:
    """Keep the most sensitive nodes in float until the variant passes (:func:`_keep_float`); for static int8 then
    dynamic int8 (:func:`_dynamic_instead`); else put the plain build back, marked as not passing."""
    plain = ctx.work / f"plain-{job.vid}"
    _copy(path, plain)
    if _accepts(exp.export, "keep_float"):
        found, why = _keep_float(job, ctx, exp, src, art, path, val, cost_s)
    else:
        found, why = None, f"the {job.fmt} exporter cannot keep nodes in float"
    if found is None and job.prec == "int8":
        found = _dynamic_instead(job, ctx, exp, src, art, val)
    if found is not None:
        return found
    _rm(art)
    _copy(plain, art)
    ctx.notes.append(f"{job.vid}: below threshold; {why}; kept the plain variant")
    return art, dict(val, retry_failed=f"below threshold: {why}; the plain variant is kept")


def _keep_float(job: VariantJob, ctx: JobContext, exp, src: Path, art: Path, path: Path, val: dict,
                cost_s: float) -> tuple[tuple[Path, dict] | None, str]:
    """The ranked nodes kept in float, 1, 2, 4, ... within the retry's budget (each attempt predicted to cost
    ``cost_s``, what the plain build took, at first); for int8 then only the weighted ops in int8. Returns the
    passing (path, validation), or None and why not."""
    def attempt(keep: list[str]) -> dict:
        try:
            return ctx.check(_export(job, ctx, exp, src, art, keep), job.fmt, exp)
        except EdgekitError as exc:    # one failed attempt is a miss, not the end of the variant
            log.info("%s: retry with %d nodes kept failed: %s", job.vid, len(keep), exc)
            return {"passed": False, "top1": -1.0, "cosine": -1.0}

    ranked = _ranking(job, ctx, src, path)
    val2, kept = retry(ranked, attempt, time_budget_s=ctx.retry_budget_s, baseline=val, patience=2,
                       attempt_cost_s=cost_s)
    if val2 and val2.get("passed"):
        return ((art if art.exists() else path), dict(val2, kept_float=kept)), ""
    elementwise = _elementwise_nodes(src) if job.prec == "int8" else []
    if elementwise:      # then: only the weighted ops in int8 (a decomposed LayerNorm or a one-hot front end in
        val3 = attempt(elementwise)     # int8 wrecks some models however many weighted nodes stay float)
        if val3.get("passed"):
            ctx.notes.append(f"{job.vid}: passes with only its weighted ops in int8 ({len(elementwise)} other nodes "
                             "kept in float)")
            return ((art if art.exists() else path),
                    dict(val3, kept_float=elementwise, kept_reason="weighted ops only")), ""
    return None, f"accuracy-aware retry failed ({len(kept)} nodes kept in float at most)"


def _dynamic_instead(job: VariantJob, ctx: JobContext, exp, src: Path, art: Path,
                     val: dict) -> tuple[Path, dict] | None:
    """The last resort of a static int8 variant that misses its thresholds: the format's dynamic int8 (int8
    weights, activations quantized at run time or kept float), recorded as precision ``int8-dynamic``; None when
    that misses too (or fails to build).

    Weights rounded to nearest first, then (with calibration data) GPTQ-rounded: neither wins everywhere. On 24
    zoo crops GPTQ lowers EfficientNet-Lite0's cosine 0.993 -> 0.961 (too few samples for its 1280-wide layers),
    and lifts PP-OCRv4's recognizer from 8 to 11 of 12 lines decoded alike.
    """
    dyn = dataclasses.replace(job, prec="int8-dynamic")
    tuned = ctx.calib if getattr(exp, "dynamic_uses_calibration", False) else None
    for calib in (None, tuned) if tuned else (None,):
        try:
            val2 = ctx.check(_export(dyn, ctx, exp, src, art, [], calibration=calib), job.fmt, exp)
        except EdgekitError as exc:
            log.info("%s: dynamic int8 instead failed: %s", job.vid, exc)
            continue
        if val2.get("passed"):
            static = _figure(val)
            how = "GPTQ-rounded" if calib else "rounded to nearest"
            ctx.notes.append(f"{job.vid}: static int8 did not validate ({static}); dynamic int8 (int8 weights {how}, "
                             "activations quantized at run time) passes and is kept, recorded as precision "
                             "int8-dynamic")
            return art, dict(val2, precision="int8-dynamic", static_int8=static)
        ctx.notes.append(f"{job.vid}: dynamic int8 ({'GPTQ-rounded' if calib else 'rounded to nearest'}) tried "
                         f"as a fallback, below threshold too ({_figure(val2)})")
    _rm(art)
    return None


def _figure(val: dict) -> str:
    """``output: metric value (bar threshold)`` of a validation record's deciding figure (or the build's error)."""
    if "error" in val:
        return f"failed: {_short(val['error'])}"
    d = val.get("decided_by") or {}
    value, bar = d.get("value"), d.get("threshold")
    if not isinstance(value, (int, float)):
        return f"cosine {val.get('cosine')}"
    return f"{d.get('output')}: {d.get('metric')} {value:.4f}" + (f" (bar {bar})" if bar is not None else "")


def _ranking(job: VariantJob, ctx: JobContext, src: Path, path: Path) -> list[str]:
    """Nodes of ``src`` ranked by the error they add at this precision (measured on an ONNX build of it)."""
    key = (src, job.prec)
    if key not in ctx.rankings:
        from .quantize import quantize as q

        model = onnx.load(str(src))
        onnx_q = path if job.fmt == "onnx" else ctx.built_onnx.get(key)
        if onnx_q is None:
            onnx_q = ctx.work / f"rank-{job.vid}.onnx"
            q(src, onnx_q, job.prec, ctx.calib, io_specs(model)[0])
        ctx.rankings[key] = rank_by_activation(model, onnx_q, ctx.feeds, quantizable_nodes(model))
    return ctx.rankings[key]


def _elementwise_nodes(src: Path) -> list[str]:
    """Nodes of ``src`` that static int8 quantizes besides its weighted ops (elementwise math, activations)."""
    model = onnx.load(str(src), load_external_data=False)
    weighted = set(quantizable_nodes(model))
    skip = {"Shape", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Constant", "Identity", "Cast"}
    return [n.name for n in model.graph.node if n.name not in weighted and n.op_type not in skip]


def _fallback(job: VariantJob, ctx: JobContext, exc: UnsupportedOpError, src: Path, art: Path) -> Built:
    """The format's own PyTorch converter (module sources), else runtime segments + TVM kernels."""
    why = _short(exc)
    if ctx.torch_src is not None and not job.label and not ctx.fallback_ops and job.fmt in TORCH_CONVERTERS:
        try:
            path = _torch_native(job, ctx, art)
            val = dict(ctx.check(path, job.fmt, get_exporter(job.fmt)),
                       exported_from=f"torch ({TORCH_CONVERTERS[job.fmt]})")
            ctx.notes.append(f"{job.vid}: {why}; exported from the PyTorch module with {TORCH_CONVERTERS[job.fmt]} "
                             "instead")
            return Built(job.vid, job.fmt, path, val, list(ctx.inputs), list(ctx.outputs))
        except EdgekitError as exc3:
            _rm(art)
            ctx.notes.append(f"{job.vid}: the PyTorch module's own converter ({TORCH_CONVERTERS[job.fmt]}) failed "
                             f"too: {_short(exc3)}")
    try:
        return _composite(job, ctx, src)
    except EdgekitError as exc2:
        if ctx.fallback_ops:
            raise
        raise type(exc2)(f"{why}; no TVM composite either: {_short(exc2)}") from None


def _torch_native(job: VariantJob, ctx: JobContext, art: Path) -> Path:
    """``art`` converted straight from the PyTorch module by the format's official converter, keeping the ONNX
    source's input/output names (Core ML) and order; static int8 calibrates on the calibration data."""
    from .calibration import samples
    from .torch_source import example_args

    module, example_inputs = ctx.torch_src
    args, _ = example_args(module, example_inputs)
    if job.fmt == "coreml":
        from .export_coreml import export_torch

        return export_torch(module, args, art, job.prec, input_names=[s.name for s in ctx.inputs],
                            output_names=[s.name for s in ctx.outputs], force=True)
    from .export_tflite import export_torch

    cal = [tuple(f[s.name] for s in ctx.inputs) for f in samples(ctx.calib, ctx.inputs)] if ctx.calib else None
    return export_torch(module, args, art, job.prec, calibration=cal, force=True)


def _composite(job: VariantJob, ctx: JobContext, src: Path) -> Built:
    """``job`` as a composite folder (plan.json + runtime segments + TVM kernels), validated. A composite's shapes
    are static (TVM kernels are), so its specs are the plan's."""
    import json

    from .composite import build_composite

    vid = f"{job.vid}+tvm"
    folder = ctx.writer.path_for(f"{vid}/composite")
    plan = build_composite(src, folder, job.fmt, fallback_ops=ctx.fallback_ops, boards=["host", *ctx.boards],
                           precision=job.prec, calibration=ctx.calib, force=True)
    meta = json.loads(Path(plan).read_text())
    specs_in = [TensorSpec.from_json(x) for x in meta["inputs"]]
    specs_out = [TensorSpec.from_json(x) for x in meta["outputs"]]
    # where no runtime here runs the target's segments (Core ML on Linux), its exporter's graph check does
    val = ctx.check(folder, "composite", CompositeGraphCheck(get_exporter(job.fmt), job.fmt))
    return Built(vid, "composite", folder, val, specs_in, specs_out)


class CompositeGraphCheck:
    """``evaluate`` for a composite whose runtime segments only a converter's graph check can run here."""

    def __init__(self, exporter, fmt: str):
        self.exporter, self.fmt = exporter, fmt

    def evaluate(self, path: Path, feeds: dict) -> dict:
        from edgekit import runtimes
        from edgekit.errors import BackendUnavailable

        if not hasattr(self.exporter, "evaluate"):
            raise BackendUnavailable(f"no runtime and no graph check for {self.fmt} segments here")
        runner = runtimes.get("composite").open(path, evaluators={self.fmt: self.exporter.evaluate})
        try:
            return runner.run(feeds, None)
        finally:
            runner.close()


def _annotate(built: Built, job: VariantJob, ctx: JobContext) -> None:
    """Pruning info and the float image stem the recipe kept, into the validation record."""
    val = built.validation
    if job.prune_info:
        val.update({k: v for k, v in job.prune_info.items()
                    if k.startswith("kept") or k in ("params", "refit", "pruned_nothing")})
    opts = ctx.exporter_options.get(job.fmt, {})
    if (built.fmt, built.precision) in STEM_FLOAT and opts.get("float_stem", True) and not opts.get("palettize") \
            and "exported_from" not in val:
        if job.source not in ctx.stems:
            ctx.stems[job.source] = stem_nodes(onnx.load(str(job.source)))
        if ctx.stems[job.source]:
            val["float_stem"] = ctx.stems[job.source]       # kept float by the recipe, before any retry
    if built.fmt == "onnx" and not val.get("kept_float") and built.precision == job.prec:
        ctx.built_onnx[(job.source, job.prec)] = built.path   # other formats rank their nodes on it


# ---- exporters that build every precision of one source in one run (onnx2tf: one tool process)

def start_background_exports(jobs: list[VariantJob], ctx: JobContext) -> None:
    """Start each (source, format) whose exporter has ``export_all`` now, beside the other work."""
    if ctx.fallback_ops:
        return
    for job in jobs:
        src = ctx.static(job.source) if job.fmt in ctx.formats_static else job.source
        _prebuilt(job, ctx, src, precs=sorted({j.prec for j in jobs if j.source == job.source and j.fmt == job.fmt}))


def waits_for_background(job: VariantJob, ctx: JobContext) -> bool:
    fut = ctx.prebuilt.get((job.source, job.fmt))
    return fut is not None and not fut.done()


def _prebuilt(job: VariantJob, ctx: JobContext, src: Path, precs: list[str] | None = None) -> Future:
    """Every precision of one source in one call where the exporter can (``export_all``); the future maps
    precision -> path (empty when there is no ``export_all`` or it failed: precisions are then exported one by
    one, which names the failing one)."""
    key = (job.source, job.fmt)
    if key not in ctx.prebuilt:
        exp = get_exporter(job.fmt)
        if precs and len(precs) > 1 and hasattr(exp, "export_all") and ctx.pool is not None:
            suffix = f"-{job.label}" if job.label else ""
            outs = {p: ctx.writer.path_for(f"{job.fmt}-{p}{suffix}/model{exp.suffix}") for p in precs}
            ctx.prebuilt[key] = ctx.pool.submit(_export_all, exp, src, outs, ctx.calib, job.fmt)
        else:
            ctx.prebuilt[key] = Future()
            ctx.prebuilt[key].set_result({})
    return ctx.prebuilt[key]


def _export_all(exp, src: Path, outs: dict[str, Path], calib, fmt: str) -> dict[str, Path]:
    try:
        return {p: Path(o) for p, o in exp.export_all(src, outs, calibration=calib).items()}
    except Exception as exc:  # noqa: BLE001 - retried one precision at a time, which names the failing one
        log.info("%s export_all failed (%s); exporting precisions one by one", fmt, exc)
        for o in outs.values():
            _rm(o)
        return {}


@contextlib.contextmanager
def background_exports() -> Iterator[ThreadPoolExecutor]:
    """A one-worker pool for exports that run beside the rest; a conversion that fails kills their tool
    processes instead of waiting minutes for them (the pool is shut down before the bundle's temporary folder
    is removed)."""
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


# ---- small helpers

def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name for p in params)     # named explicitly (exporters may reject unknown **options)


def _short(exc: BaseException, n: int = 200) -> str:
    return " ".join(str(exc).split())[:n]


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
