"""ONNX quantization through onnxruntime.quantization: fp16 (fp32 I/O kept), dynamic int8, static int8 (QDQ).

Every function takes a float ONNX file and writes a new one; ``keep_float`` names nodes left in float
(used by the accuracy-aware retry). Static int8 works on an opset >= 13 copy (:func:`needs_opset`; per-channel
``DequantizeLinear`` takes ``axis`` from opset 13). Every step writes its temporary files into a temporary folder,
never into the current directory, and every failure is a ConversionError naming the step.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from edgekit.errors import ConversionError, EdgekitError, InputError
from edgekit.specs import TensorSpec

from .calibration import samples
from .qtune import correct_bias, gptq_round

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution")


@contextlib.contextmanager
def _quiet():
    """Silence onnxruntime.quantization's advice printed through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


#: the lowest opset each precision's quantized graph is valid at (per-channel QDQ: DequantizeLinear ``axis``)
_MIN_OPSET = {"int8": 13}


def needs_opset(precision: str) -> int:
    """The opset a ``precision`` variant is built at, at least: a source below it is upgraded (a copy) first."""
    return _MIN_OPSET.get(precision, 0)


def opset_note(source_opset: int, precision: str) -> str | None:
    """The report line for a variant quantized on an upgraded copy, or None when the source's opset was kept."""
    need = needs_opset(precision)
    if source_opset and source_opset < need:
        return (f"{precision}: quantized on a copy upgraded from opset {source_opset} to {need} "
                f"(per-channel DequantizeLinear needs opset >= {need})")
    return None


def detail(exc: BaseException) -> str:
    """The first line of a library error (ONNX Runtime's ``[ONNXRuntimeError] : 10 : ...`` prefix dropped)."""
    text = str(exc).strip()
    line = next((ln for ln in text.splitlines() if ln.strip()), "") or type(exc).__name__
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)[:400]


@contextlib.contextmanager
def step(what: str):
    """Turn a library failure inside ``what`` into a ConversionError naming the step (library text as detail)."""
    try:
        yield
    except EdgekitError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnx/onnxruntime raise many types; all become one typed error
        raise ConversionError(f"{what} failed: {detail(exc)}") from exc


def upgraded(model: onnx.ModelProto, opset: int, what: str) -> onnx.ModelProto:
    """``model`` itself when its opset is at least ``opset``, else an upgraded copy; ConversionError naming
    ``what`` when the ONNX version converter cannot upgrade it."""
    from .canonical import opset_of

    current = opset_of(model)
    if current >= opset:
        return model
    with step(f"{what}: opset upgrade {current} -> {opset} (onnx version converter)"):
        up = onnx.version_converter.convert_version(model, opset)
        onnx.checker.check_model(up)
    return up


def check_precision(p: str) -> str:
    if p not in PRECISIONS:
        raise InputError(f"unknown precision {p!r}; expected one of {', '.join(PRECISIONS)}")
    return p


def to_fp16(src: Path, dst: Path, keep_float: Iterable[str] = ()) -> Path:
    """fp16 weights and compute; inputs and outputs stay fp32; ``keep_float`` nodes stay fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with step("fp16 conversion (onnxruntime float16)"):
        half = convert_float_to_float16(model, keep_io_types=True, node_block_list=list(keep_float) or None,
                                        disable_shape_infer=False)
    onnx.save(half, str(dst))
    return dst


def dynamic_int8(src: Path, dst: Path, keep_float: Iterable[str] = (), per_channel: bool = True,
                 calibration: Mapping[str, np.ndarray] | None = None, inputs: Sequence[TensorSpec] = ()) -> Path:
    """int8 weights everywhere: MatMul/Gemm/Attention/LSTM/GRU with activations quantized at run time (ONNX
    Runtime's ``quantize_dynamic``), Conv/ConvTranspose weight-only (:func:`int8_conv_weights`; an image stem
    stays float, see :func:`stem_nodes`).

    With ``calibration``, the weights are first rounded onto the same symmetric per-channel grid by GPTQ with bias
    correction (:func:`~edgekit.converters.qtune.int8_grid_weights`), so the quantizers below reproduce them
    instead of rounding to nearest. Neither wins everywhere (on 24 zoo calibration samples GPTQ lifts PP-OCRv4's
    recognizer and lowers EfficientNet-Lite0: cosine 0.993 -> 0.961); the conversion's fallback tries both.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = list(keep_float)
    model = onnx.load(str(src))
    keep_conv = keep + stem_nodes(model)
    with tempfile.TemporaryDirectory(prefix="edgekit-dyn-") as tmp:
        tuned = src
        if calibration is not None:
            from .qtune import int8_grid_weights

            with step("dynamic int8: GPTQ rounding of the weights on the calibration data"):
                model, _ = int8_grid_weights(model, samples(calibration, inputs), skip=keep_conv)
            tuned = Path(tmp) / "tuned.onnx"
            onnx.save(model, str(tuned))
        mid = Path(tmp) / "dynamic.onnx"
        with step("dynamic int8 quantization (onnxruntime quantize_dynamic)"), _quiet():
            quantize_dynamic(str(tuned), str(mid), weight_type=QuantType.QInt8, per_channel=per_channel,
                             op_types_to_quantize=["MatMul", "Gemm", "Attention", "LSTM", "GRU"],
                             nodes_to_exclude=keep or None)
        model = onnx.load(str(mid))
    with step("int8 Conv weights (weight-only DequantizeLinear)"):
        model = int8_conv_weights(model, keep_conv)
    onnx.save(model, str(dst))
    return dst


#: ops whose weight initializer (input 1) :func:`int8_conv_weights` stores as int8, and its output-channel axis
_WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}


def int8_conv_weights(model: onnx.ModelProto, keep_float: Iterable[str] = ()) -> onnx.ModelProto:
    """``model`` with each Conv/ConvTranspose float weight stored as symmetric per-output-channel int8 and
    dequantized by a ``DequantizeLinear`` in front of the op (weight-only: the op computes in float).

    A weight shared by several nodes, or read by a kept node, stays float. Needs opset >= 13 (``axis``): an older
    model is upgraded first; where that fails the Conv weights stay float.
    """
    from onnx import numpy_helper

    keep = set(keep_float)
    if not _conv_weight_nodes(model, keep):
        return model
    try:
        model = upgraded(model, 13, "int8 Conv weights")
    except ConversionError as exc:
        log.info("Conv weights stay float: %s", exc)
        return model
    inits = {t.name: t for t in model.graph.initializer}
    for node in _conv_weight_nodes(model, keep):
        _dequantized_weight(model, node, numpy_helper.to_array(inits[node.input[1]]), _WEIGHT_AXIS[node.op_type])
    return model


def _conv_weight_nodes(model: onnx.ModelProto, keep: set[str]) -> list[onnx.NodeProto]:
    """The Conv/ConvTranspose nodes (not in ``keep``) whose float weight is an initializer read by them alone."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    return [n for n in model.graph.node if n.op_type in _WEIGHT_AXIS and n.name not in keep and len(n.input) > 1
            and n.input[1] in inits and readers[n.input[1]] == 1
            and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT]


def _dequantized_weight(model: onnx.ModelProto, node: onnx.NodeProto, w: np.ndarray, axis: int) -> None:
    """Replace ``node``'s weight input by DequantizeLinear(int8 weight, per-channel scale) on ``axis``."""
    from onnx import helper, numpy_helper

    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=other) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    name = node.input[1]
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == name))
    model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                    numpy_helper.from_array(scale, f"{name}_scale"),
                                    numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}_zero")])
    dq = helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"], [f"{name}_dq"],
                          name=f"{node.name or name}_weight_dq", axis=axis)
    idx = list(model.graph.node).index(node)
    model.graph.node.insert(idx, dq)
    node.input[1] = f"{name}_dq"


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict], progress: bool = False):
        from tqdm import tqdm

        self._it = iter(feeds)
        self._bar = tqdm(total=len(feeds), desc="calibrate", unit="sample", leave=False, disable=not progress)

    def get_next(self):
        item = next(self._it, None)
        if item is None:
            self._bar.close()
        else:
            self._bar.update(1)
        return item


def static_int8(src: Path, dst: Path, calibration: Mapping[str, np.ndarray] | None, inputs: Sequence[TensorSpec],
                keep_float: Iterable[str] = (), method: str = "minmax", per_channel: bool = True,
                progress: bool = False, reduce_range: bool = True, float_stem: bool = True,
                bias_correction: bool = True, optimize_rounding: bool = True) -> Path:
    """QDQ int8 with per-channel weights and activations calibrated on ``calibration``.

    ``reduce_range``: 7-bit weights, except 8-bit (per-channel) for depthwise Conv. x86 int8 kernels without
    VNNI (AVX2, AVX-512F) multiply u8 activations by s8 weights with VPMADDUBSW, whose pairwise int16 sums
    saturate with 8-bit weights; ONNX Runtime's depthwise kernel accumulates in int32 and does not, so 7 bits
    there only lose precision. ``float_stem``: a first Conv reading a graph input with
    at most 4 channels (an image stem: few weights, little time) stays float, with the depthwise Conv after it
    (:func:`stem_nodes`). On EfficientNet-Lite0 (AVX2 host)
    these raised top-1 agreement with fp32 from 0.67 (all 8-bit) / 0.80 (all 7-bit) to 0.92, cosine 0.921 ->
    0.983, at the same size and speed. ``optimize_rounding``: GPTQ rounding of Gemm and pointwise Conv weights
    (:func:`~.qtune.gptq_round`); ``bias_correction``: :func:`~.qtune.correct_bias`. With both, 0.92 -> 0.96
    top-1 agreement (256 crops) and cosine 0.997.
    """
    if not calibration:
        raise InputError("static int8 quantization needs calibration data: pass --calibration DATA (a .npz with "
                         "one [N, ...] array per input, or a folder of images), or ask for int8-dynamic")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    if method not in methods:
        raise InputError(f"unknown calibration method {method!r}; expected one of {', '.join(methods)}")
    feeds = samples(calibration, inputs)
    with tempfile.TemporaryDirectory(prefix="edgekit-q-") as tmp:
        source = onnx.load(str(src))
        up = upgraded(source, needs_opset("int8"), "static int8")
        if up is not source:
            src = Path(tmp) / "opset.onnx"
            onnx.save(up, str(src))
        pre = _preprocess(up, Path(tmp) / "pre.onnx") or src
        # pre-processing may rename nodes; map keep_float by node output (stable) back to names
        names = _names_by_output(src, pre, keep_float)
        model = onnx.load(str(pre), load_external_data=False)
        if float_stem:
            names += [n for n in stem_nodes(model) if n not in names]
        # 8-bit depthwise weights (no saturation there); everything else follows reduce_range
        overrides = {w: [{"reduce_range": False, "axis": 0, "symmetric": True}]
                     for w in depthwise_weights(model)} if reduce_range and per_channel else {}
        with step("static int8 quantization (onnxruntime quantize_static)"), _quiet():
            quantize_static(str(pre), str(dst), _Reader(feeds, progress), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            reduce_range=reduce_range,
                            weight_type=QuantType.QInt8, calibrate_method=methods[method],
                            nodes_to_exclude=names or None,
                            extra_options={"CalibTensorRangeSymmetric": False, "WeightSymmetric": True,
                                           "TensorQuantOverrides": overrides})
        float_model = onnx.load(str(pre)) if optimize_rounding or bias_correction else None
        if optimize_rounding:
            with step("static int8: GPTQ weight rounding"):
                gptq_round(float_model, dst, feeds)
        if bias_correction:
            with step("static int8: bias correction"):
                correct_bias(float_model, dst, feeds)
        with step("static int8: loading the quantized model in ONNX Runtime"):
            _check_loads(dst)
    return dst


def _preprocess(model: onnx.ModelProto, dst: Path) -> Path | None:
    """onnxruntime's quant_pre_process (shape inference, no graph optimization: it renames the nodes keep_float
    names) written to ``dst``; None when it fails (it only helps).

    Symbolic shape inference runs here, not inside quant_pre_process: when it is incomplete, ORT saves
    ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` file into the current directory before raising.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(_symbolic_shapes(model) or model, str(dst), skip_optimization=True,
                          skip_symbolic_shape=True)
    except Exception as exc:  # noqa: BLE001 - pre-processing only helps; quantize the model without it
        log.info("quant_pre_process skipped (%s)", detail(exc))
        return None
    return dst


def _symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """ORT's symbolic shape inference (``SymbolicShapeInference.infer_shapes`` without its save to the current
    directory on an incomplete result); None when incomplete or unavailable."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        ssi = SymbolicShapeInference(2**31 - 1, False, False, 0)
        ssi._preprocess(model)  # noqa: SLF001 - the public infer_shapes litters the cwd (see _preprocess)
        done = False
        while ssi.run_:
            done = ssi._infer_impl()  # noqa: SLF001
        ssi._update_output_from_vi()  # noqa: SLF001
    except Exception as exc:  # noqa: BLE001 - an aid only (sympy missing, an op it cannot follow)
        log.info("symbolic shape inference skipped (%s)", detail(exc))
        return None
    return ssi.out_mp_ if done else None


def _check_loads(path: Path) -> None:
    """Open ``path`` in ONNX Runtime: an invalid quantized graph fails here, in its own step."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def depthwise_weights(model: onnx.ModelProto) -> list[str]:
    """Constant weights of grouped Conv (depthwise): ONNX Runtime runs them on an int32-accumulating kernel."""
    inits = {i.name for i in model.graph.initializer}
    return [n.input[1] for n in model.graph.node
            if n.op_type == "Conv" and _group(n) > 1 and len(n.input) > 1 and n.input[1] in inits]


def stem_nodes(model: onnx.ModelProto) -> list[str]:
    """Convs that read a graph input with at most 4 channels (NCHW image stems), and a depthwise Conv fed by a
    stem through activations only.

    The depthwise conv right after the stem has the largest error of its own in EfficientNet/MobileNet-style
    networks (3 quantization steps RMS on EfficientNet-Lite0, every other layer under 1; TF's
    QuantizationDebugger): kept float with the stem it raised cosine vs fp32 0.9969 -> 0.9979 and top-1
    agreement 0.961 -> 0.965 (256 crops) for a tiny share of the compute.
    """
    real = {i.name: i for i in model.graph.input} if model.graph.input else {}
    for init in model.graph.initializer:
        real.pop(init.name, None)
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            users.setdefault(t, []).append(n)
    out = []
    for n in model.graph.node:
        if n.op_type == "Conv" and n.input and n.input[0] in real and n.name:
            dims = real[n.input[0]].type.tensor_type.shape.dim
            if len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value <= 4:
                out.append(n.name)
                nxt = users.get(n.output[0], [])
                while len(nxt) == 1 and nxt[0].op_type in _ACTIVATIONS:
                    nxt = users.get(nxt[0].output[0], [])
                if len(nxt) == 1 and nxt[0].op_type == "Conv" and _group(nxt[0]) > 1 and nxt[0].name:
                    out.append(nxt[0].name)
    return out


_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu")


def _names_by_output(src: Path, pre: Path, keep: Iterable[str]) -> list[str]:
    keep = list(keep)
    if not keep or pre == src:
        return keep
    a = onnx.load(str(src), load_external_data=False)
    b = onnx.load(str(pre), load_external_data=False)
    out_of = {n.name: tuple(n.output) for n in a.graph.node}
    by_out = {tuple(n.output): n.name for n in b.graph.node}
    return [by_out.get(out_of.get(k, ()), k) for k in keep]


def quantize(src: Path, dst: Path, precision: str, calibration=None, inputs: Sequence[TensorSpec] = (),
             keep_float: Iterable[str] = (), method: str = "minmax", progress: bool = False) -> Path:
    """Write the ``precision`` variant of the float ONNX ``src`` to ``dst``."""
    check_precision(precision)
    if precision == "fp32":
        onnx.save(onnx.load(str(src)), str(dst))
        return dst
    if precision == "fp16":
        return to_fp16(src, dst, keep_float)
    if precision == "int8-dynamic":
        return dynamic_int8(src, dst, keep_float, calibration=calibration, inputs=inputs)
    return static_int8(src, dst, calibration, inputs, keep_float, method=method, progress=progress)


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes whose precision matters most (weighted ops and attention math)."""
    ops = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "Attention", "LSTM", "GRU"}
    return [n.name for n in model.graph.node if n.op_type in ops]
