"""TFLite export: ONNX -> .tflite through onnx2tf in an isolated tool environment; PyTorch -> .tflite with litert-torch.

ONNX sources: the graph is prepared here (a copy: onnx2tf overwrites its input), rewritten where onnx2tf or LiteRT
mishandle a pattern (:mod:`edgekit.converters.tflite_rewrites`: erf-GELU fused into ``Gelu``, one-axis Slices,
edge-padded max pools, ReduceL2 expanded, TF-safe node names), then ``_tflite_worker.py`` runs in the onnx2tf
tool environment (converters/toolenv.py): onnx2tf writes a SavedModel keeping the source's NCHW inputs
(recurrent sequences and states in their own shape), and ``TFLiteConverter.from_saved_model`` writes the requested
precision (fp32, fp16, int8-dynamic, or full int8 from the calibration data) with float inputs/outputs.
Every result is loaded in LiteRT and checked against the source's inputs and outputs before it is kept.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._fs import atomic_file, check_writable
from edgekit.errors import ConversionError, EdgekitError, InputError, UnsupportedOpError

from . import register_exporter, toolenv
from .tflite_rewrites import (
    add_kernel_shapes,
    edge_padded_max_pools,
    expand_reduce_l2,
    fuse_erf_gelu,
    recurrent_inputs,
    split_multi_axis_slices,
    tf_safe_node_names,
)

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")
_WORKER = Path(__file__).with_name("_tflite_worker.py")


def _check_precision(precision: str, calibration: dict | None) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"unknown TFLite precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not calibration:
        raise InputError("static int8 TFLite export needs calibration data (--calibration / calibration=); "
                         "use int8-dynamic for weight-only quantization without data")


def _load_onnx(onnx_path: Path):
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"ONNX source {path} does not exist")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ConversionError(f"{path} is not a valid ONNX model: {str(exc).splitlines()[0][:300]}") from None
    return model


#: ops whose result depends on a tensor's runtime shape: with any dynamic input dim, converters fold them wrongly
_SHAPE_OPS = ("Shape", "Size")


def check_static_inputs(model, fmt: str, fixed: dict | None = None) -> None:
    """Raise a ConversionError naming the first input whose dynamic dims ``fmt`` cannot take: every dim after the
    first (a dynamic H/W or sequence length), and a dynamic first (batch) dim too when the graph computes with
    shapes (Shape/Size). Inputs named in ``fixed`` (pinned sizes) pass."""
    fixed = fixed or {}
    inits = {i.name for i in model.graph.initializer}
    reads_shapes = any(n.op_type in _SHAPE_OPS for n in model.graph.node)
    for vi in model.graph.input:
        if vi.name in inits or vi.name in fixed:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if any(d is None and (i > 0 or reads_shapes) for i, d in enumerate(dims)):
            shown = ",".join("?" if d is None else str(d) for d in dims)
            example = ",".join(f"D{i}" if d is None else str(d) for i, d in enumerate(dims))
            raise ConversionError(f"{fmt} export: input {vi.name!r} has dynamic dims [{shown}], which {fmt} cannot "
                                  f"convert; give --input-shape {vi.name}={example} with the sizes it runs at "
                                  f"(input_shapes={{{vi.name!r}: (...)}} in the API)")


def prepare_onnx(onnx_path: Path, dest: Path) -> dict:
    """Write a conversion-ready copy of the source to ``dest``; return facts about it."""
    import onnx
    from onnx import version_converter

    model = _load_onnx(onnx_path)
    check_static_inputs(model, "TFLite")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    has_erf = any(n.op_type == "Erf" for n in model.graph.node)
    fused = 0
    if has_erf:
        if opset < 20:
            try:
                model = version_converter.convert_version(model, 20)
            except Exception as exc:
                raise ConversionError(f"{onnx_path}: cannot upgrade opset {opset} -> 20 for the erf-GELU "
                                      f"rewrite: {str(exc).splitlines()[0][:200]}") from None
        fused = fuse_erf_gelu(model)
        onnx.checker.check_model(model)
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    add_kernel_shapes(model)
    split_multi_axis_slices(model)
    edge_padded_max_pools(model)
    expand_reduce_l2(model)
    tf_safe_node_names(model)
    onnx.save(model, str(dest))
    return {
        "input_names": [i.name for i in inputs],
        "output_names": [o.name for o in model.graph.output],
        "output_shapes": [[d.dim_value if d.HasField("dim_value") else -1 for d in o.type.tensor_type.shape.dim]
                          if o.type.tensor_type.HasField("shape") else None for o in model.graph.output],
        "input_ranks": [len(i.type.tensor_type.shape.dim) for i in inputs],
        "recurrent_inputs": recurrent_inputs(model),
        "erf_left": any(n.op_type == "Erf" for n in model.graph.node),
        "gelu_fused": fused,
    }


def _source_specs(onnx_path: Path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.get_inputs(), sess.get_outputs()


def verify_tflite(path: Path, onnx_path: Path) -> None:
    """Load ``path`` in LiteRT and check its inputs/outputs against the ONNX source (count, rank, shape)."""
    from edgekit.runtimes.litert import interpreter_class, new_interpreter

    Interpreter = interpreter_class()
    try:
        interp, _ = new_interpreter(Interpreter, model_path=str(path))   # without XNNPACK where it refuses
    except Exception as exc:
        msg = str(exc)
        flex = sorted(set(re.findall(r"Flex\w+", msg)))
        if flex or "Select TensorFlow op" in msg:
            raise UnsupportedOpError(f"{path.name}: LiteRT cannot run the TensorFlow op(s) "
                                     f"{', '.join(flex) or '(Flex)'} this model converted to") from None
        raise ConversionError(f"{path.name}: the converted model does not load in LiteRT: "
                              f"{msg.splitlines()[0][:300] if msg else type(exc).__name__}") from None
    ops = {op["op_name"] for op in interp._get_ops_details()}
    flex = sorted(o for o in ops if "Flex" in o or o.startswith("Custom"))
    if flex:
        raise UnsupportedOpError(f"{path.name}: contains op(s) LiteRT cannot run: {', '.join(flex)}")
    src_in, src_out = _source_specs(onnx_path)
    sigs = interp.get_signature_list()
    if len(sigs) == 1:
        runner = interp.get_signature_runner(next(iter(sigs)))
        t_in, t_out = list(runner.get_input_details().values()), list(runner.get_output_details().values())
    else:
        t_in, t_out = interp.get_input_details(), interp.get_output_details()
    # runtimes feed by position: same names must come in the source's order
    got_names = list(runner.get_input_details()) if len(sigs) == 1 else [
        re.sub(r"^serving_default_|:\d+$", "", d["name"]) for d in t_in]
    if set(got_names) == {s.name for s in src_in}:
        if got_names != [s.name for s in src_in]:
            raise ConversionError(f"{path.name}: input order {got_names} differs from the source's "
                                  f"{[s.name for s in src_in]}")
    for kind, src, got in (("inputs", src_in, t_in), ("outputs", src_out, t_out)):
        if len(src) != len(got):
            raise ConversionError(f"{path.name}: {len(got)} {kind} after conversion, the source has {len(src)}")
        for s, t in zip(src, got):
            want = [d if isinstance(d, int) else -1 for d in s.shape]
            sig = t.get("shape_signature")
            have = [int(d) for d in (sig if sig is not None and len(sig) else t["shape"])]
            if len(want) != len(have) or any(w != h and w != -1 and h != -1 for w, h in zip(want, have)):
                raise ConversionError(f"{path.name}: {kind[:-1]} {s.name!r} has shape {have} after conversion, "
                                      f"the source has {want} (layout changed)")
            if kind == "inputs" or "float" in s.type:
                if np.dtype(t["dtype"]).kind not in ("f", "i", "u", "b") or (
                        "float" in s.type and np.dtype(t["dtype"]) != np.float32):
                    raise ConversionError(f"{path.name}: {kind[:-1]} {s.name!r} is {np.dtype(t['dtype'])}, "
                                          f"expected float32 like the source")


class _Progress:
    """A tqdm bar over the conversion stages, refined by onnx2tf's per-node lines."""

    def __init__(self, name: str, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=f"tflite {name}", unit="step", file=sys.stderr, leave=False)
        self.unsupported: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.result: dict = {}

    def line(self, text: str) -> None:
        text = text.rstrip()
        if text.startswith("EDGEKIT-STAGE "):
            stage = text.split(" ", 1)[1]
            self.bar.set_postfix_str(stage)
            if stage != "check-ops":
                self.bar.update(1)
        elif text.startswith("EDGEKIT-UNSUPPORTED "):
            _, node, op = text.split(" ", 2)
            self.unsupported.append((node, op))
        elif text.startswith("EDGEKIT-RESULT "):
            info = json.loads(text.split(" ", 1)[1])
            self.result[info["precision"]] = info
        elif text.startswith("EDGEKIT-ERROR "):
            self.errors.append(text.split(" ", 1)[1])
        else:
            m = re.search(r"INFO:\s*(\d+)\s*/\s*(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", text))
            if m:
                self.bar.set_postfix_str(f"onnx2tf node {m.group(1)}/{m.group(2)}")
            elif text.endswith("started " + "=" * 20) or " started =" in text:
                self.bar.set_postfix_str("onnx2tf: " + re.sub(r"\x1b\[[0-9;]*m", "", text).split(" started")[0])

    def close(self) -> None:
        self.bar.close()


def _failure_detail(output: str) -> str:
    """The most telling lines of a failed onnx2tf/TF run: the ONNX node it was on and the last error."""
    clean = re.sub(r"\x1b\[[0-9;]*m", "", output)
    node = re.findall(r"onnx_op_name:\s*(\S+)", clean)
    optype = re.findall(r"onnx_op_type:\s*(\S+)", clean)
    errs = [ln.strip() for ln in clean.splitlines()
            if re.search(r"(Error|ERROR|Exception)\b", ln) and "EDGEKIT" not in ln]
    parts = []
    if node:
        parts.append(f"at ONNX node {node[-1]!r} ({optype[-1] if optype else '?'})")
    if errs:
        parts.append(errs[-1][:400])
    return "; ".join(parts) or (clean.strip().splitlines() or ["no output"])[-1][:400]


def _save_samples(onnx_path: Path, calibration: dict, dest: Path) -> None:
    """The calibration data as stacked samples ``[N, *input shape]``, each of the batch the model takes (the
    worker feeds ``arr[i]``): row-form arrays of a fixed-batch model are split by :func:`calibration.samples`."""
    import onnx

    from .calibration import samples
    from .canonical import io_specs

    specs = io_specs(onnx.load(str(onnx_path), load_external_data=False))[0]
    feeds = samples({s.name: np.asarray(calibration[s.name]) for s in specs}, specs)
    np.savez(dest, **{s.name: np.stack([f[s.name] for f in feeds]) for s in specs})


#: SavedModels written by onnx2tf in this process, by source hash: other precisions of one source reuse them
_SAVED: dict[str, tempfile.TemporaryDirectory] = {}


def _saved_model_dir(prepared_onnx: Path, job: dict) -> Path:
    """Where the SavedModel of this (prepared source, onnx2tf options) lives for this process."""
    from edgekit._fs import sha256_path

    key = sha256_path(prepared_onnx) + json.dumps([job["keep_nchw"], job["keep_shape"], job["pseudo_ops"],
                                                   toolenv.ONNX2TF.key])
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    if key not in _SAVED:
        while len(_SAVED) >= 8:
            _SAVED.pop(next(iter(_SAVED))).cleanup()
        _SAVED[key] = tempfile.TemporaryDirectory(prefix="edgekit-savedmodel-")
    return Path(_SAVED[key].name) / "saved_model"


@register_exporter
class TFLiteExporter:
    """ONNX -> TFLite with onnx2tf (tool environment) + TFLiteConverter; validated in LiteRT."""

    #: inputs need static dims (a leading batch dim may stay dynamic, see :func:`check_static_inputs`): the
    #: pipeline gives this exporter a source whose input dims are fixed
    static_shapes = True
    format = "tflite"
    #: int8-dynamic (dynamic-range quantization) does not use calibration data
    dynamic_uses_calibration = False
    extra = "tflite"
    suffix = ".tflite"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("ai_edge_litert") is None and importlib.util.find_spec("tflite_runtime") is None:
            return "checking TFLite exports needs LiteRT: pip install 'edgekit-sdk[tflite]'"
        return toolenv.unavailable_reason(toolenv.ONNX2TF)

    def export(self, onnx_path: Path, out_path: Path, precision: str, calibration: dict | None = None,
               **options: Any) -> Path:
        """Convert ``onnx_path`` to ``out_path`` at ``precision``. Options: force, keep_nchw, timeout."""
        return self.export_all(onnx_path, {precision: out_path}, calibration, **options)[precision]

    def export_all(self, onnx_path: Path, outputs: dict[str, Path], calibration: dict | None = None,
                   **options: Any) -> dict[str, Path]:
        """Convert to several precisions (precision -> output path) with one onnx2tf run and one TF start-up."""
        force = bool(options.pop("force", False))
        keep_nchw = options.pop("keep_nchw", True)
        timeout = options.pop("timeout", 1800)
        if options:
            raise InputError(f"unknown option(s) for the TFLite exporter: {', '.join(sorted(options))}")
        if not outputs:
            raise InputError("no TFLite precision to export")
        outputs = {p: Path(o) for p, o in outputs.items()}
        for precision, out in outputs.items():
            _check_precision(precision, calibration)
            check_writable(out, force)  # fail before minutes of conversion, not after
        onnx_path = Path(onnx_path)
        with tempfile.TemporaryDirectory(prefix="edgekit-tflite-") as tmp:
            work = Path(tmp)
            facts = prepare_onnx(onnx_path, work / "model.onnx")
            job = {
                "onnx": str(work / "model.onnx"), "workdir": str(work),
                "targets": [{"precision": p, "out": str(work / f"model-{p}.tflite")} for p in outputs],
                "input_names": facts["input_names"], "input_ranks": facts["input_ranks"],
                "output_names": facts["output_names"],
                "output_shapes": facts["output_shapes"],
                "keep_nchw": [n for n, r in zip(facts["input_names"], facts["input_ranks"])
                              if r >= 3 and n not in facts["recurrent_inputs"]] if keep_nchw else [],
                "keep_shape": facts["recurrent_inputs"],  # sequences and states: no channel layout to keep or change
                "pseudo_ops": ["erf"] if facts["erf_left"] else [],  # onnx2tf: polynomial erf, no FlexErf
            }
            if "int8" in outputs:
                missing = [n for n in facts["input_names"] if n not in calibration]
                if missing:
                    raise InputError(f"calibration data lacks input(s) {', '.join(missing)}; "
                                     f"given: {', '.join(calibration) or 'none'}")
                _save_samples(work / "model.onnx", calibration, work / "calibration.npz")
                job["calibration"] = str(work / "calibration.npz")
            job["saved_model"] = str(_saved_model_dir(work / "model.onnx", job))
            (work / "job.json").write_text(json.dumps(job))
            shutil.copy(_WORKER, work / _WORKER.name)
            shutil.copy(_WORKER.with_name("qtune.py"), work / "qtune.py")   # the worker's GPTQ (pure numpy)
            progress = _Progress(onnx_path.stem, total=2 + len(outputs))
            try:
                code, output = toolenv.run_tool(toolenv.ONNX2TF, [str(work / _WORKER.name), str(work / "job.json")],
                                                cwd=work, timeout=timeout, on_line=progress.line)
                if progress.unsupported:
                    nodes = ", ".join(f"{n} ({op})" for n, op in progress.unsupported)
                    raise UnsupportedOpError(
                        f"{onnx_path.name}: TFLite export (onnx2tf) cannot convert node(s) {nodes}")
                flex = sorted(set(re.findall(r'fused\["(\w+):", "[^"]*?/(\w+)@', output)))
                if code != 0 and "ERROR_NEEDS_FLEX_OPS" in output:
                    ops = ", ".join(f"{op} (from {where})" for op, where in flex) or "?"
                    raise UnsupportedOpError(f"{onnx_path.name}: TFLite has no builtin kernel for TensorFlow op(s) "
                                             f"{ops}; LiteRT cannot run Flex (Select TF) ops")
                for target in job["targets"]:
                    if code != 0 or not Path(target["out"]).is_file():
                        detail = "; ".join(progress.errors) or _failure_detail(output)
                        if code < 0 and "[edgekit]" not in output:   # a native crash leaves no error line
                            stage = re.findall(r"^EDGEKIT-STAGE (\S+)", output, re.MULTILINE)
                            detail = f"the converter crashed (signal {-code}) at stage {stage[-1] if stage else '?'}"
                        raise ConversionError(
                            f"{onnx_path.name}: TFLite {target['precision']} export failed: {detail}")
                progress.bar.set_postfix_str("verify in LiteRT")
                for target in job["targets"]:
                    verify_tflite(Path(target["out"]), onnx_path)
                progress.bar.update(1)
            finally:
                progress.close()
            for target in job["targets"]:
                with atomic_file(outputs[target["precision"]], force=force) as tmp_out:
                    shutil.copyfile(target["out"], tmp_out)
        return outputs


def _stdout_to_stderr():
    """litert-torch and ai-edge-quantizer print progress to stdout: keep it off a CLI's (JSON) output."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


def export_torch(module, example_inputs: tuple, out_path: Path, precision: str = "fp32",
                 calibration: dict | list | None = None, force: bool = False) -> Path:
    """Convert a PyTorch module to ``out_path`` (.tflite) with litert-torch; float inputs/outputs at every precision.

    fp32: litert-torch; int8-dynamic: PT2E dynamic quantization; fp16 and static int8: ai-edge-quantizer on the
    fp32 model (PT2E static int8 would make the model's inputs/outputs int8).

    ``calibration`` for static int8: a list of example-input tuples, or a dict input-position/name -> array
    [N, ...] (sample ``i`` is ``arr[i:i+1]``), in the order of ``example_inputs``.
    """
    with _stdout_to_stderr():
        return _export_torch(module, example_inputs, out_path, precision, calibration, force)


def export_torch_signatures(module, examples: dict[str, tuple], out_path: Path, force: bool = False) -> Path:
    """fp32 ``.tflite`` with one signature per entry of ``examples`` (name -> example inputs) sharing the weights.

    For models that litert-torch converts only with static shapes (its dynamic-shape lowering fails on reshapes
    and embedding lookups): one signature per shape bucket, e.g. ``{"s16": ids16, "s128": ids128}``. edgekit's
    LiteRT runner then runs the signature whose input shapes match the call (runtimes/litert.py).
    """
    from edgekit._extras import require

    if not examples:
        raise InputError("export_torch_signatures needs at least one (name -> example inputs) entry")
    check_writable(Path(out_path), force)
    require("torch", "torch", "PyTorch -> TFLite export")
    module = module.eval()
    if importlib.util.find_spec("litert_torch") is None:
        return _signatures_in_toolenv(module, examples, Path(out_path), force)
    litert_torch = require("litert_torch", "tflite-export", "PyTorch -> TFLite export")
    try:
        with _stdout_to_stderr():
            conv = None
            for name, ex in examples.items():
                conv = (litert_torch.signature if conv is None else conv.signature)(name, module, tuple(ex))
            edge = conv.convert()
            with atomic_file(Path(out_path), force=force) as tmp_out:
                edge.export(str(tmp_out))
    except EdgekitError:
        raise
    except Exception as exc:
        raise ConversionError(f"litert-torch conversion with signatures {list(examples)} failed: "
                              f"{str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__}") from exc
    return Path(out_path)


def torch_signatures_unavailable_reason() -> str | None:
    """None when :func:`export_torch_signatures` and :func:`dynamic_range_int8` can run (and be checked) here."""
    if importlib.util.find_spec("ai_edge_litert") is None and importlib.util.find_spec("tflite_runtime") is None:
        return "checking TFLite exports needs LiteRT: pip install 'edgekit-sdk[tflite]'"
    if importlib.util.find_spec("torch") is None:
        return "PyTorch -> TFLite needs torch: pip install 'edgekit-sdk[torch]'"
    if importlib.util.find_spec("litert_torch") is not None and importlib.util.find_spec("ai_edge_quantizer"):
        return None
    return toolenv.unavailable_reason(toolenv.LITERT_TORCH)


def _signatures_in_toolenv(module, examples: dict[str, tuple], out_path: Path, force: bool) -> Path:
    """export_torch_signatures where litert-torch is not importable: the programs are exported here with
    ``torch.export`` and converted in the litert-torch tool environment (same torch version)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="edgekit-litert-torch-") as tmp:
        work = Path(tmp)
        sigs = []
        for name, ex in examples.items():
            ex = tuple(ex)
            try:
                program = torch.export.export(module, ex)
            except Exception as exc:
                raise ConversionError(f"torch.export of signature {name!r} failed: "
                                      f"{str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}"
                                      ) from exc
            torch.export.save(program, str(work / f"{name}.pt2"))
            sigs.append({"name": name, "program": str(work / f"{name}.pt2"),
                         "inputs": [[list(t.shape), str(t.dtype).removeprefix("torch.")] for t in ex]})
        _run_litert_torch({"signatures": sigs, "fp32": str(work / "fp32.tflite")}, work,
                          f"litert-torch conversion with signatures {list(examples)}")
        with atomic_file(out_path, force=force) as tmp_out:
            shutil.copyfile(work / "fp32.tflite", tmp_out)
    return out_path


def _run_litert_torch(job: dict, work: Path, what: str, timeout: float = 1800) -> None:
    """Run converters/_litert_torch_worker.py on ``job`` in the litert-torch tool environment."""
    worker = Path(__file__).with_name("_litert_torch_worker.py")
    (work / "job.json").write_text(json.dumps(job))
    shutil.copy(worker, work / worker.name)
    code, output = toolenv.run_tool(toolenv.LITERT_TORCH, [str(work / worker.name), str(work / "job.json")],
                                    cwd=work, timeout=timeout,
                                    on_line=lambda ln: ln.startswith("EDGEKIT-STAGE") and sys.stderr.write(
                                        f"  [litert-torch] {ln[len('EDGEKIT-STAGE '):]}"))
    if code != 0 or "EDGEKIT-DONE" not in output:
        lines = [ln for ln in output.splitlines() if ln.strip() and not ln.startswith("EDGEKIT-")]
        raise ConversionError(f"{what} failed in the litert-torch tool environment: "
                              f"{' | '.join(lines[-3:])[:600] or f'exit status {code}'}")


def _export_torch(module, example_inputs: tuple, out_path: Path, precision: str = "fp32",
                  calibration: dict | list | None = None, force: bool = False) -> Path:
    """:func:`export_torch`, with the converters' stdout output going to stderr."""
    from edgekit._extras import require

    _check_precision(precision, calibration)
    torch = require("torch", "tflite-export", "PyTorch -> TFLite export")
    litert_torch = require("litert_torch", "tflite-export", "PyTorch -> TFLite export")
    module = module.eval()
    example_inputs = tuple(example_inputs)
    out_path = Path(out_path)
    try:
        if precision == "int8-dynamic":
            edge = _torch_pt2e(torch, litert_torch, module, example_inputs, calibration)
            with atomic_file(out_path, force=force) as tmp_out:
                edge.export(str(tmp_out))
            return out_path
        if precision == "int8":
            return _torch_int8_via_onnx(torch, module, example_inputs, out_path, calibration, force)
        edge32 = litert_torch.convert(module, example_inputs)
        with tempfile.TemporaryDirectory(prefix="edgekit-torch-") as tmp:
            f32 = Path(tmp) / "fp32.tflite"
            edge32.export(str(f32))
            if precision == "fp32":
                blob = f32.read_bytes()
            else:
                blob = _fp16_weights(f32)
        with atomic_file(out_path, force=force) as tmp_out:
            Path(tmp_out).write_bytes(bytes(blob))
    except EdgekitError:
        raise
    except Exception as exc:
        raise ConversionError(f"litert-torch {precision} conversion failed: {str(exc).splitlines()[0][:400]}") \
            from exc
    return out_path


def _torch_int8_via_onnx(torch, module, example_inputs, out_path: Path, calibration, force: bool) -> Path:
    """Static int8 with float I/O: torch -> ONNX (opset 20) -> the onnx2tf path with its full-int8 converter.

    (litert-torch's PT2E and ai-edge-quantizer's static recipe both make the model's inputs/outputs int8.)
    """
    names = [f"input_{i}" for i in range(len(example_inputs))]
    samples = _torch_samples(example_inputs, calibration)
    cal = {n: np.concatenate([_np(s[i]) for s in samples]) for i, n in enumerate(names)}
    with tempfile.TemporaryDirectory(prefix="edgekit-torch-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        torch.onnx.export(module, example_inputs, str(onnx_path), input_names=names, opset_version=20, dynamo=False)
        return TFLiteExporter().export(onnx_path, out_path, "int8", calibration=cal, force=force)


def _np(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def dynamic_range_int8(f32: Path, out_path: Path, force: bool = False) -> Path:
    """Dynamic-range int8 of an fp32 ``.tflite`` with ai-edge-quantizer: int8 weights (per channel), activations
    quantized on the fly, float inputs/outputs; no calibration data. Unlike PT2E dynamic quantization it leaves
    embedding tables in a form LiteRT's EMBEDDING_LOOKUP accepts (PT2E's asymmetric table fails to prepare)."""
    check_writable(Path(out_path), force)
    if importlib.util.find_spec("ai_edge_quantizer") is None:     # in the litert-torch tool environment
        with tempfile.TemporaryDirectory(prefix="edgekit-litert-torch-") as tmp:
            work = Path(tmp)
            shutil.copyfile(f32, work / "fp32.tflite")
            _run_litert_torch({"fp32": str(work / "fp32.tflite"), "int8_dynamic": str(work / "int8.tflite")}, work,
                              f"{Path(f32).name}: dynamic-range int8 quantization")
            with atomic_file(Path(out_path), force=force) as tmp_out:
                shutil.copyfile(work / "int8.tflite", tmp_out)
        return Path(out_path)
    from ai_edge_quantizer import quantizer, recipe

    try:
        with _stdout_to_stderr():
            qt = quantizer.Quantizer(str(f32))
            qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            blob = qt.quantize().quantized_model
    except Exception as exc:
        raise ConversionError(f"{Path(f32).name}: dynamic-range int8 quantization failed: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}") from exc
    with atomic_file(Path(out_path), force=force) as tmp_out:
        Path(tmp_out).write_bytes(bytes(blob))
    return Path(out_path)


def _fp16_weights(f32: Path) -> bytes:
    """float16 weights with ai-edge-quantizer (compute and I/O stay float32)."""
    from ai_edge_quantizer import quantizer

    qt = quantizer.Quantizer(str(f32))
    qt.load_quantization_recipe(_fp16_recipe())
    return qt.quantize().quantized_model


def _fp16_recipe():
    """ai-edge-quantizer recipe: the weights of every supported op cast to float16, compute in float32."""
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    rm = recipe_manager.RecipeManager()
    rm.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                              algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    return rm.get_quantization_recipe()


def _torch_samples(example_inputs: tuple, calibration) -> list[tuple]:
    if calibration is None:
        return [example_inputs]
    if isinstance(calibration, (list, tuple)):
        return [tuple(s) if isinstance(s, (list, tuple)) else (s,) for s in calibration]
    arrays = list(calibration.values())
    n = min(len(a) for a in arrays)
    return [tuple(np.asarray(a)[i:i + 1] for a in arrays) for i in range(n)]


def _torch_pt2e(torch, litert_torch, module, example_inputs, calibration):
    """Dynamic-range int8 through PT2E (int8 weights, float I/O and activations)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    graph = torch.export.export(module, example_inputs).module()
    graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for sample in _torch_samples(example_inputs, calibration):
            graph(*[torch.as_tensor(_np(s)) for s in sample])
    graph = convert_pt2e(graph, fold_quantize=False)
    return litert_torch.convert(graph, example_inputs, quant_config=QuantConfig(pt2e_quantizer=quantizer))
