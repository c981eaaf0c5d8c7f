"""Build a composite: runtime segments in the target's format plus TVM kernels for the ops it lacks.

``build_composite(onnx_path, out_dir, target_format, fallback_ops, boards)`` partitions the model by the
target's op table (``op_support``), exports each supported segment with the target's exporter (ONNX
segments are written directly), compiles each fallback segment with TVM for every board (``"host"`` is this
CPU; aarch64 boards are cross-compiled; Core ML composites also get ``arm64-apple-macos`` objects and Metal
kernels, boards ``apple-m1`` and ``apple-m1:metal``), checks the
composite against ONNX Runtime on the whole model when the host can run it, and writes ``plan.json``:

    {"format": "edgekit-composite", "version": 1, "target_format": "tflite", "boards": [...],
     "host": {"machine": "x86_64", "system": "Linux"},  # what the "host" kernels were built for
     "inputs": [spec...], "outputs": [spec...],
     "steps": [{"name": "step0", "kind": "runtime"|"tvm", "format": "tflite"|"onnx"|"coreml"|"tvm",
                "artifacts": {"any": "step0.tflite"} | {"host": "step1.host.json", "rpi4": ...},
                "inputs": [spec...], "outputs": [spec...], "ops": {...}, "reasons": {...}}],
     "tensors": [{"name", "shape", "dtype", "from": "step0", "to": ["step1"]}], "validation": {...}}

Shapes are made static first (dynamic input dims from ``input_shapes`` or 1): TVM kernels are static.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._fs import atomic_dir
from edgekit.errors import ConversionError, InputError, UnsupportedOpError, ValidationError
from edgekit.specs import TensorSpec

from .partition import FALLBACK, Partition, extract_segment, partition_for_target

PLAN_FORMAT = "edgekit-composite"
PLAN_NAME = "plan.json"
#: op-support table used for each export format
TABLE_OF_FORMAT = {"tflite": "tflite", "coreml": "coreml", "onnx": "onnxruntime",
                   "onnx-reduced": "onnxruntime-reduced"}
#: the board Core ML composites always carry kernels for (a Mac runs them beside the Core ML model)
APPLE_BOARD = "apple-m1"
#: composite check tolerance (fp32 runtime segments); looser for reduced precision
TOLERANCE = {"fp32": (1e-4, 1e-4), "fp16": (5e-2, 5e-2)}


def _static_model(model: Any, input_shapes: dict | None) -> Any:
    """A copy of ``model`` with every dynamic input dim fixed, shapes inferred through the graph."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    init = {t.name for t in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in init:
            continue
        given = (input_shapes or {}).get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        if given is not None and len(given) != len(dims):
            raise InputError(f"input_shapes[{vi.name!r}] has rank {len(given)}, the model's input has rank {len(dims)}")
        for k, d in enumerate(dims):
            if given is not None:
                d.ClearField("dim_param")
                d.dim_value = int(given[k])
            elif not d.HasField("dim_value"):
                d.ClearField("dim_param")
                d.dim_value = 1
    del m.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    except Exception as exc:
        try:  # some ops' inference is incomplete in strict mode: take what the lenient mode gives
            return onnx.shape_inference.infer_shapes(m, data_prop=True)
        except Exception:
            raise ConversionError(f"shape inference failed on the model: {str(exc).splitlines()[0]}") from None


def defaulted_dims(model: Any, input_shapes: dict | None) -> dict[str, list]:
    """{input: shape, dynamic dims by name or ``"?"``} for inputs whose dynamic dims ``_static_model`` fixes to 1
    (no shape given in ``input_shapes``)."""
    init = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in init or (input_shapes or {}).get(vi.name) is not None:
            continue
        if any(not d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    return out


def _extract(model: Any, seg, name: str, defaulted: dict[str, list]) -> Any:
    """``extract_segment``; where shapes are unknown because dynamic dims were guessed as 1, say which inputs."""
    try:
        return extract_segment(model, seg, name)
    except ConversionError as exc:
        if "no type is known" not in str(exc) or not defaulted:
            raise
        shapes = ", ".join(f"{n} [{','.join(map(str, dims))}]" for n, dims in defaulted.items())
        example = " ".join(f"--input-shape {n}={','.join(map(str, dims))}" for n, dims in defaulted.items())
        raise ConversionError(
            f"{exc.args[0].split(' (shape inference')[0]}: TVM kernels need static shapes, and the dynamic dims of "
            f"input(s) {shapes} were set to 1, which this model does not accept; give the real shapes with "
            f"{example} (input_shapes={{name: shape}} in the API)") from None


def _spec(vi) -> TensorSpec:
    from onnx import helper

    tt = vi.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return TensorSpec(vi.name, shape, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)))


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, disable=None)
    except ImportError:  # pragma: no cover - tqdm is a core dependency
        return None


def segment_calibration(model: Any, names: Sequence[str], calibration: dict | None) -> dict | None:
    """Calibration data for a segment: its input tensors, computed by running the fp32 model on the model's own
    calibration data where a segment starts inside the graph (``[N, ...]`` per tensor, one row per sample)."""
    if calibration is None or all(n in calibration for n in names):
        return None if calibration is None else {n: calibration[n] for n in names}
    import onnxruntime as ort

    from .accuracy import _expose
    from .calibration import samples
    from .canonical import io_specs

    blob, exposed = _expose(model, names)
    missing = sorted(set(names) - set(exposed))
    if missing:
        raise ConversionError(f"no calibration data for segment input(s) {', '.join(missing)}: their types are unknown")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    rows = [sess.run(list(names), f) for f in samples(calibration, io_specs(model)[0])]
    return {n: np.stack([r[i] for r in rows]) for i, n in enumerate(names)}


def _export_runtime(seg_path: Path, out_stem: Path, fmt: str, precision: str, calibration: dict | None) -> Path:
    if fmt == "onnx" and precision == "fp32":
        target = out_stem.with_suffix(".onnx")
        target.write_bytes(seg_path.read_bytes())
        return target
    from . import get_exporter

    exporter = get_exporter(fmt)
    why = exporter.unavailable_reason()
    if why:
        raise ConversionError(f"cannot export {fmt} segments here: {why}")
    return Path(exporter.export(seg_path, out_stem.with_suffix(exporter.suffix), precision, calibration))


def plan_partition(model: Any, target_format: str, fallback_ops: Iterable[str] = ()) -> Partition:
    """The partition ``build_composite`` would use (handy to inspect before building)."""
    table = TABLE_OF_FORMAT.get(target_format)
    if table is None:
        raise InputError(f"unknown composite target format {target_format!r}; expected one of "
                         f"{', '.join(TABLE_OF_FORMAT)}")
    return partition_for_target(model, table, fallback_ops)


def build_composite(onnx_path: str | Path, out_dir: str | Path, target_format: str,
                    fallback_ops: Sequence[str] = (), boards: Sequence[str] = ("host",), precision: str = "fp32",
                    *, input_shapes: dict | None = None, calibration: dict | None = None, force: bool = False,
                    validate: bool = True) -> Path:
    """Write a composite folder (``plan.json`` + artifacts) to ``out_dir`` and return the plan path.

    ``target_format``: "tflite", "coreml", "onnx" or "onnx-reduced". ``fallback_ops``: op types forced onto
    TVM. ``boards``: "host" and/or board profile names (cross compilers must be installed; "apple-m1:metal"
    for Metal kernels). ``precision``
    applies to runtime segments; TVM kernels are fp32. The composite is validated against ONNX Runtime on
    the whole model when the host board is built and its runtime is usable here (``validate``).
    """
    import onnx

    from .tvm_compile import board_target, check_cross_compiler, compile_for_board

    src = Path(onnx_path)
    if not src.is_file():
        raise InputError(f"{src}: no such ONNX file")
    boards = list(dict.fromkeys(boards or ("host",)))
    if target_format == "coreml":
        boards += [b for b in (APPLE_BOARD, f"{APPLE_BOARD}:metal") if b not in boards]
    # check every board (and its cross compiler) before any slow work
    board_targets = {b: board_target(b.partition(":")[0]) for b in boards}
    for b, bt in board_targets.items():
        device = b.partition(":")[2]
        if device and (device != "metal" or not bt.is_apple):
            raise InputError(f"board {b!r}: the only device suffix is ':metal', on Apple boards (e.g. apple-m1:metal)")
        if not bt.is_apple:
            check_cross_compiler(bt.cc, bt.board)
    source = onnx.load(str(src))
    defaulted = defaulted_dims(source, input_shapes)
    model = _static_model(source, input_shapes)
    part = plan_partition(model, target_format, fallback_ops)
    _check_tvm_covers(model, part, target_format)
    out = Path(out_dir)
    step_fmt = "onnx" if target_format == "onnx-reduced" else target_format
    steps: list[dict] = []
    specs: dict[str, TensorSpec] = {}
    total = sum(len(boards) if s.kind == FALLBACK else 1 for s in part.segments)
    bar = _progress(total, f"composite {target_format}")
    with atomic_dir(out, force=force) as tmp:
        seg_dir = tmp / "segments"
        seg_dir.mkdir()
        for seg in part.segments:
            name = f"step{seg.index}"
            sub = _extract(model, seg, name, defaulted)
            ins = [_spec(v) for v in sub.graph.input]
            outs = [_spec(v) for v in sub.graph.output]
            for s in (*ins, *outs):
                specs.setdefault(s.name, s)
            seg_path = seg_dir / f"{name}.onnx"
            onnx.save(sub, str(seg_path))
            step: dict[str, Any] = {"name": name, "ops": seg.op_counts(model),
                                    "inputs": [s.to_json() for s in ins], "outputs": [s.to_json() for s in outs]}
            if seg.kind == FALLBACK:
                step.update(kind="tvm", format="tvm", reasons=seg.reasons, artifacts={})
                for board in boards:
                    if bar is not None:
                        bar.set_postfix_str(f"{name} TVM {board}")
                    base, _, device = board.partition(":")
                    ops = ", ".join(step["ops"])
                    lib = compile_for_board(sub, tmp / f"{name}.{board.replace(':', '-')}", base,
                                            device=device or "cpu",
                                            what=f"compiling segment {seg.index} (ops: {ops}) for {board}")
                    step["artifacts"][board] = lib.with_suffix(".json").name
                    if bar is not None:
                        bar.update()
            else:
                if bar is not None:
                    bar.set_postfix_str(f"{name} {step_fmt}")
                art = _export_runtime(seg_path, tmp / name, step_fmt, precision,
                                      segment_calibration(model, [i.name for i in ins], calibration))
                step.update(kind="runtime", format=step_fmt, artifacts={"any": art.name})
                if bar is not None:
                    bar.update()
            steps.append(step)
        if bar is not None:
            bar.close()
        plan = {
            "format": PLAN_FORMAT, "version": 1, "source": src.name, "target_format": target_format,
            "precision": precision, "boards": boards, "fallback_ops": sorted(set(fallback_ops)),
            "targets": {b: bt.target for b, bt in board_targets.items()},
            "host": {"machine": platform.machine(), "system": platform.system()},
            "inputs": [_spec(v).to_json() for v in model.graph.input
                       if v.name not in {t.name for t in model.graph.initializer}],
            "outputs": [_spec(v).to_json() for v in model.graph.output],
            "steps": steps, "tensors": _handoffs(part, specs), "validation": None,
        }
        (tmp / PLAN_NAME).write_text(json.dumps(plan, indent=2))
        if validate and "host" in boards:
            plan["validation"] = _validate(tmp / PLAN_NAME, model, precision)
            (tmp / PLAN_NAME).write_text(json.dumps(plan, indent=2))
    return out / PLAN_NAME


def _check_tvm_covers(model: Any, part: Partition, target_format: str) -> None:
    """Fail early, naming node and op, when a fallback op is one TVM cannot compile either."""
    from .tvm_compile import tvm_unsupported_ops

    ops = {model.graph.node[i].op_type for s in part.segments if s.kind == FALLBACK for i in s.nodes}
    if not ops:
        return
    import onnx

    probe = onnx.ModelProto()
    probe.graph.node.extend(model.graph.node[i] for s in part.segments if s.kind == FALLBACK for i in s.nodes)
    missing = tvm_unsupported_ops(probe)
    if missing:
        seg = next(s for s in part.segments if s.kind == FALLBACK and set(s.reasons) & set(missing))
        op = next(o for o in missing if o in seg.reasons)
        node = next(model.graph.node[i] for i in seg.nodes if model.graph.node[i].op_type == op)
        raise UnsupportedOpError(
            f"node {node.name or node.output[0]!r} ({op}): {seg.reasons[op]}, and TVM cannot compile {op} either "
            f"(its Relax ONNX frontend has no converter); pick another target format than {target_format!r}, "
            f"drop {op} from --fallback-ops if it was forced, or replace {op} in the model")


def _handoffs(part: Partition, specs: dict[str, TensorSpec]) -> list[dict]:
    """The tensors one step produces for later steps (graph inputs are not hand-offs)."""
    rows = []
    for seg in part.segments:
        for t in seg.outputs:
            users = [f"step{s.index}" for s in part.segments if t in s.inputs]
            if not users:
                continue
            row = specs[t].to_json()
            row.update({"from": f"step{seg.index}", "to": users})
            rows.append(row)
    return rows


def _validate(plan_path: Path, model: Any, precision: str) -> dict:
    """Run the composite on the host and ONNX Runtime on the whole model; raise ValidationError on mismatch."""
    import onnxruntime as ort

    from edgekit import runtimes
    from edgekit.specs import random_feeds

    plan = json.loads(plan_path.read_text())
    for fmt in {s["format"] for s in plan["steps"] if s["kind"] == "runtime"}:
        try:
            runtimes.for_format(fmt)
        except Exception as exc:
            return {"checked": False, "reason": f"{fmt} cannot run here: {exc}"}
    from edgekit.runtimes.composite import CompositeBackend

    runner = CompositeBackend().open(plan_path, board="host")
    try:
        feeds = random_feeds(runner.inputs, seed=0)
        got = runner.run(feeds, None)
    finally:
        runner.close()
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        ref = dict(zip(names, sess.run(names, feeds)))
    except Exception as exc:  # noqa: BLE001 - ORT cannot run the whole model (why TVM kernels exist)
        return {"checked": False, "reason": f"ONNX Runtime cannot run the whole model: {str(exc).splitlines()[0]}"}
    atol, rtol = TOLERANCE.get(precision, (0.1, 0.1))
    worst = {}
    for k, r in ref.items():
        g = got[k]
        if g.shape != r.shape:
            raise ValidationError(f"composite output {k!r} has shape {g.shape}, ONNX Runtime gives {r.shape}")
        err = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) if r.size else 0.0
        worst[k] = err
        if not np.allclose(g, r, atol=atol, rtol=rtol):
            raise ValidationError(f"composite output {k!r} differs from ONNX Runtime on the whole model: max abs "
                                  f"error {err:.3g} (tolerance atol={atol}, rtol={rtol})")
    return {"checked": True, "reference": "onnxruntime (whole model)", "max_abs_error": worst,
            "atol": atol, "rtol": rtol}
