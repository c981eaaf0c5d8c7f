"""Core ML exporter: ONNX -> MIL (edgekit's translator) -> ``.mlpackage``, plus PyTorch via ``ct.convert``.

Precisions: ``fp32`` and ``fp16`` (Core ML compute precision; inputs and outputs stay fp32), ``int8``
(per-channel linear weight quantization with ``coremltools.optimize.coreml``; ``int8-dynamic`` maps to the
same weight-only int8, since Core ML has no dynamic activation quantization) and, as an option,
``palettize=N`` (N-bit k-means weight palettization). ``evaluate`` runs a saved package: ``predict`` on macOS,
elsewhere the MIL graph check of :mod:`edgekit.converters.mil_eval` (not a device run).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._extras import require
from edgekit._fs import atomic_dir
from edgekit.errors import ConversionError, EdgekitError, InputError

from . import register_exporter
from .mil_eval import META_KEY
from .mil_eval import evaluate as graph_check
from .quantize import detail, step

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
#: weights with fewer elements stay in float when compressing (coremltools' default is 2048; biases stay small)
WEIGHT_THRESHOLD = 128
#: how a Core ML variant is validated on this host
VALIDATION_KIND = "predict" if platform.system() == "Darwin" else "graph-check"


def _quiet():
    """Silence coremltools' progress bars and warnings (edgekit shows its own progress)."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="coremltools")
    warnings.filterwarnings("ignore", message=".*(scikit-learn|Torch version|Input shape not fully).*")


def _target(name: str):
    import coremltools as ct

    try:
        return getattr(ct.target, name)
    except AttributeError:
        raise InputError(f"unknown Core ML deployment target {name!r} (e.g. iOS16, iOS17, macOS13)") from None


def _compress(mlmodel, precision: str, palettize: int | None, granularity: str, weight_threshold: int,
              mode: str = "linear_symmetric", skip: frozenset[str] = frozenset()):
    """Weight compression of an fp16/fp32 ML program (coremltools.optimize.coreml); ``skip``: const names
    kept in float."""
    import coremltools.optimize.coreml as cto

    keep = {name: None for name in skip} or None

    if palettize:
        if palettize not in (1, 2, 3, 4, 6, 8):
            raise InputError(f"palettize must be one of 1, 2, 3, 4, 6, 8 bits, got {palettize}")
        require("sklearn", "apps", "k-means palettization")
        cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(
            mode="kmeans", nbits=palettize, weight_threshold=weight_threshold), op_name_configs=keep)
        mlmodel = cto.palettize_weights(mlmodel, cfg)
    if precision in ("int8", "int8-dynamic"):
        cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode=mode, dtype="int8", granularity=granularity, weight_threshold=weight_threshold), op_name_configs=keep)
        mlmodel = cto.linear_quantize_weights(mlmodel, cfg)
    return mlmodel


def _output_shapes(mlmodel, shapes: dict[str, tuple]):
    """Record output shapes in the spec (ct.convert leaves them empty when a dim is dynamic)."""
    import coremltools as ct

    spec = mlmodel.get_spec()
    changed = False
    for o in spec.description.output:
        arr = o.type.multiArrayType
        dims = shapes.get(o.name)
        if dims is None or len(arr.shape) or o.type.WhichOneof("Type") != "multiArrayType":
            continue
        arr.shape.extend([d if isinstance(d, int) else 1 for d in dims])
        if any(not isinstance(d, int) for d in dims):
            for d in dims:
                r = arr.shapeRange.sizeRanges.add()
                r.lowerBound, r.upperBound = (d, d) if isinstance(d, int) else (1, -1)
        changed = True
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir) if changed else mlmodel


def _save(mlmodel, out_path: Path, meta: dict, force: bool) -> Path:
    mlmodel.user_defined_metadata[META_KEY] = json.dumps(meta, sort_keys=True)
    mlmodel.short_description = f"edgekit Core ML export ({meta.get('precision')})"
    with atomic_dir(out_path, force=force) as tmp:
        pkg = tmp / out_path.name
        try:
            mlmodel.save(str(pkg))
        except Exception as exc:
            raise ConversionError(f"cannot save Core ML package {out_path}: {exc}") from exc
        staged = tmp.with_name(tmp.name + ".pkg")
        pkg.rename(staged)
        tmp.rmdir()
        staged.rename(tmp)
    return out_path


def _narrowed(onnx_path: Path, spec, in_names: dict[str, str], out_names: dict[str, str]
              ) -> tuple[dict[str, str], dict[str, str]]:
    """``{onnx name: "int64->int32"}`` for the inputs and outputs whose Core ML feature dtype differs from the
    ONNX one (Core ML has no int64 or float64 tensors): the runner converts across them."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    from edgekit.runtimes.coreml import feature_specs

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    src = {v.name: np.dtype(tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
           for v in [*graph.input, *graph.output] if v.type.tensor_type.elem_type}

    def side(names: dict[str, str], features) -> dict[str, str]:
        feat = {f.name: f.dtype for f in feature_specs(features)}
        return {n: f"{src[n].name}->{feat[c].name}" for n, c in names.items()
                if n in src and c in feat and src[n] != feat[c]}

    return side(in_names, spec.description.input), side(out_names, spec.description.output)


def _int8_source(onnx_path: Path, calibration: dict | None, keep_float: set[str], threshold: int, on_grid: bool,
                 float_stem: bool):
    """(ONNX model to translate, how many weights were tuned) for weight-only int8.

    ``float_stem``: the image stem and the depthwise conv after it join ``keep_float`` (as in static int8 ONNX:
    on EfficientNet-Lite0 weight-only int8 cosine 0.9966 -> 0.9996). With calibration data and coremltools'
    symmetric per-channel grid (``on_grid``), the other Conv/Gemm/MatMul weights are rounded onto that grid here by
    GPTQ with bias correction (:func:`~edgekit.converters.qtune.int8_grid_weights`); coremltools then
    reproduces them exactly instead of rounding to nearest."""
    import onnx

    from .calibration import samples
    from .canonical import io_specs
    from .qtune import int8_grid_weights
    from .quantize import stem_nodes

    model = onnx.load(str(onnx_path))
    if float_stem:
        keep_float |= set(stem_nodes(model))
    if not (calibration and on_grid):
        return onnx_path, 0
    feeds = samples(calibration, io_specs(model)[0])
    return int8_grid_weights(model, feeds, min_size=threshold, skip=sorted(keep_float))


def _check_static(onnx_path: Path, input_shapes: dict | None) -> None:
    """A clear ConversionError for input dims the MIL program cannot take dynamic (see ``static_shapes``)."""
    import onnx

    from .export_tflite import check_static_inputs

    with step("Core ML export: reading the ONNX source"):
        model = onnx.load(str(onnx_path), load_external_data=False)
    check_static_inputs(model, "Core ML", input_shapes)


def _kept_weights(mlmodel, tr, keep_float: set[str], threshold: int) -> set[str]:
    """MIL weight consts owned by the ONNX nodes in ``keep_float`` (left uncompressed)."""
    if not keep_float:
        return set()
    import coremltools.optimize.coreml as cto

    return {name for name in cto.get_weights_metadata(mlmodel, weight_threshold=threshold)
            if keep_float & set(tr.weight_owner(name))}


def _check_precision(precision: str, compute_units: str | None = None) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"Core ML export: unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")


def _convert_program(prog, precision: str, target: str):
    import coremltools as ct

    cp = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    try:
        return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=_target(target),
                          compute_precision=cp)
    except EdgekitError:
        raise
    except Exception as exc:
        raise ConversionError(f"Core ML export: conversion of the MIL program (ct.convert) failed: "
                              f"{type(exc).__name__}: {detail(exc)}") from exc


@register_exporter
class CoreMLExporter:
    """ONNX -> .mlpackage through the ONNX->MIL translator (see onnx_to_mil.SUPPORTED_OPS)."""

    #: inputs need static dims (a leading batch dim may stay dynamic, see export_tflite.check_static_inputs):
    #: the pipeline gives this exporter a source whose input dims are fixed
    static_shapes = True
    format = "coreml"
    #: int8 and int8-dynamic are both weight-only here, GPTQ-rounded when given calibration data: a fallback from
    #: int8 to int8-dynamic only brings something new without it (rounding to nearest)
    dynamic_uses_calibration = False
    extra = "coreml"
    suffix = ".mlpackage"
    precisions = PRECISIONS
    validation_kind = VALIDATION_KIND

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("coremltools") is None:
            return "coremltools is not installed; install it with: pip install 'edgekit-sdk[coreml]'"
        return None

    def export(self, onnx_path: Path, out_path: Path, precision: str, calibration: dict | None = None,
               keep_float: list[str] | None = None, **options: Any) -> Path:
        """Write ``out_path`` (.mlpackage). Options: ``input_shapes`` {name: dims} to pin dynamic dims,
        ``deployment_target`` (default "iOS16"), ``palettize`` (bits), ``granularity`` ("per_channel"),
        ``weight_threshold`` (smallest weight compressed, elements), ``int8_mode`` (default "linear_symmetric",
        per-channel; rounded to nearest, min cosine vs fp32 EfficientNet-Lite0 0.993 / MiniLM-L6 0.996, "linear"
        0.990 / 0.999), ``force``.
        ``keep_float``: ONNX node names whose weights stay in float (accuracy-aware retries); ``float_stem``
        (default True): so do the image stem's (see :func:`_int8_source`). Core ML int8 here is weight-only
        (activations stay fp16; coremltools' activation calibration runs ``predict``, which needs macOS):
        ``calibration`` drives the GPTQ rounding and bias correction of the int8 weights."""
        require("coremltools", "coreml", "Core ML export")
        from . import onnx_to_mil

        _check_precision(precision)
        known = {"input_shapes", "deployment_target", "palettize", "granularity", "weight_threshold", "int8_mode",
                 "float_stem", "force"}
        unknown = set(options) - known
        if unknown:
            raise InputError(f"unknown Core ML export option(s) {sorted(unknown)}; known: {sorted(known)}")
        _quiet()
        out_path = Path(out_path)
        if out_path.suffix != self.suffix:
            raise InputError(f"Core ML output must end in {self.suffix}, got {out_path}")
        threshold = int(options.get("weight_threshold", WEIGHT_THRESHOLD))
        granularity, mode = options.get("granularity", "per_channel"), options.get("int8_mode", "linear_symmetric")
        keep_float = set(keep_float or ())
        source: Any = onnx_path
        tuned = 0
        _check_static(onnx_path, options.get("input_shapes"))
        if precision in ("int8", "int8-dynamic") and not options.get("palettize"):
            with step("Core ML export: int8 weight rounding (GPTQ on calibration data)"):
                source, tuned = _int8_source(onnx_path, calibration, keep_float, threshold,
                                             granularity == "per_channel" and mode == "linear_symmetric",
                                             bool(options.get("float_stem", True)))
        with step("Core ML export: ONNX -> MIL translation"):
            tr = onnx_to_mil.translate(source, input_shapes=options.get("input_shapes"))
        shapes = {v.name: tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in v.shape)
                  for v in tr.program.functions["main"].outputs}
        mlmodel = _convert_program(tr.program, precision, options.get("deployment_target", "iOS16"))
        with step(f"Core ML export: {precision} weight compression (coremltools.optimize)"):
            mlmodel = _output_shapes(mlmodel, shapes)
            skip = _kept_weights(mlmodel, tr, keep_float, threshold)
            mlmodel = _compress(mlmodel, precision, options.get("palettize"), granularity, threshold, mode,
                                frozenset(skip))
            narrowed_in, narrowed_out = _narrowed(onnx_path, mlmodel.get_spec(), tr.input_names, tr.output_names)
        meta = {"kept_float": sorted(skip), "tuned_weights": tuned,
                "inputs": tr.input_names, "outputs": tr.output_names,
                "narrowed_inputs": {**tr.narrowed_inputs, **narrowed_in}, "narrowed_outputs": narrowed_out,
                "precision": precision, "source": "onnx", "palettize": options.get("palettize")}
        return _save(mlmodel, out_path, meta, bool(options.get("force", False)))

    def evaluate(self, path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of a saved package: ``predict`` on macOS, the MIL graph check elsewhere (see module doc)."""
        if platform.system() == "Darwin":
            return predict(path, feeds)
        return graph_check(path, feeds)


def predict(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Core ML ``predict`` (macOS only); feeds/outputs use the source's names and dtypes (int64 ids narrowed to
    int32 and back), as :func:`edgekit.runtimes.coreml.io_mapping` maps them."""
    import coremltools as ct

    from edgekit.runtimes.coreml import io_mapping

    io = io_mapping(ct.utils.load_spec(str(path)))
    res = ct.models.MLModel(str(path)).predict(io.to_features(feeds))
    return io.from_features(res)


def export_torch(module, example_inputs: tuple, out_path: Path, precision: str = "fp32", *,
                 input_names: list[str] | None = None, output_names: list[str] | None = None,
                 deployment_target: str = "iOS16", palettize: int | None = None, force: bool = False) -> Path:
    """PyTorch ``nn.Module`` -> .mlpackage via ``torch.export`` + ``ct.convert`` (jit.trace breaks on numpy 2.4).
    ``output_names``: the names edgekit's runner gives the outputs, in order (default: Core ML's own)."""
    torch = require("torch", "torch", "Core ML export from PyTorch")
    ct = require("coremltools", "coreml", "Core ML export")
    _check_precision(precision)
    _quiet()
    out_path = Path(out_path)
    if out_path.suffix != ".mlpackage":
        raise InputError(f"Core ML output must end in .mlpackage, got {out_path}")
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    names = input_names or [f"input_{i}" if len(example_inputs) > 1 else "input" for i in range(len(example_inputs))]
    if len(names) != len(example_inputs):
        raise InputError(f"{len(names)} input_names for {len(example_inputs)} example inputs")
    module = module.eval()
    try:
        exported = torch.export.export(module, example_inputs).run_decompositions({})
    except Exception as exc:
        raise ConversionError(f"torch.export failed: {type(exc).__name__}: {exc}") from exc
    inputs = []
    for n, t in zip(names, example_inputs):
        dt = np.int32 if t.dtype in (torch.int64, torch.int32) else np.float32
        inputs.append(ct.TensorType(name=n, shape=tuple(t.shape), dtype=dt))
    cp = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    try:
        mlmodel = ct.convert(exported, inputs=inputs, convert_to="mlprogram",
                             minimum_deployment_target=_target(deployment_target), compute_precision=cp)
    except Exception as exc:
        raise ConversionError(f"ct.convert of the torch.export program failed: {type(exc).__name__}: {exc}") from exc
    mlmodel = _compress(mlmodel, precision, palettize, "per_channel", WEIGHT_THRESHOLD)
    narrowed = {n: "int64->int32" for n, t in zip(names, example_inputs) if t.dtype == torch.int64}
    from edgekit.runtimes.coreml import feature_specs

    outs = feature_specs(mlmodel.get_spec().description.output)
    src_dtypes = [getattr(a, "meta", {}).get("val") for a in exported.graph.output_node().args[0]]
    src_dtypes = [torch.empty(0, dtype=v.dtype).numpy().dtype if hasattr(v, "dtype") else None for v in src_dtypes]
    narrowed_out = {o.name: f"{dt.name}->{o.dtype.name}" for o, dt in zip(outs, src_dtypes)
                    if dt is not None and len(src_dtypes) == len(outs) and dt != o.dtype}
    if output_names is not None and len(output_names) != len(outs):
        raise InputError(f"{len(output_names)} output_names for the module's {len(outs)} outputs")
    out_map = dict(zip(output_names or [o.name for o in outs], [o.name for o in outs]))
    narrowed_out = {src: narrowed_out[c] for src, c in out_map.items() if c in narrowed_out}
    meta = {"inputs": {n: n for n in names}, "outputs": out_map, "narrowed_inputs": narrowed,
            "narrowed_outputs": narrowed_out, "precision": precision, "source": "torch", "palettize": palettize}
    return _save(mlmodel, out_path, meta, force)
