"""Runs INSIDE the onnx2tf tool environment (numpy 1, TensorFlow 2.19): ONNX -> SavedModel -> .tflite.

Not imported by edgekit. Invoked as ``python _tflite_worker.py JOB.json``; the job names the ONNX copy,
the targets (precision, output file), the inputs to keep in NCHW, those to keep in their shape absolutely
(recurrent sequences and states), and an optional calibration ``.npz``.
Progress goes to stdout as ``EDGEKIT-STAGE <name>`` lines (onnx2tf's own per-node lines pass through);
ops onnx2tf has no handler for are reported as ``EDGEKIT-UNSUPPORTED <node> <op_type>`` with exit status 3.
"""

from __future__ import annotations

import json
import os
import pkgutil
import re
import sys

SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def stage(name: str) -> None:
    print(f"EDGEKIT-STAGE {name}", flush=True)


def check_ops(onnx_path: str) -> int:
    """Report every node whose op onnx2tf cannot convert; return how many."""
    import onnx
    import onnx2tf.ops

    known = {m.name for m in pkgutil.iter_modules(onnx2tf.ops.__path__)}
    model = onnx.load(onnx_path, load_external_data=False)
    bad = 0
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            print(f"EDGEKIT-UNSUPPORTED {node.name or '<unnamed>'} {node.domain + '.' if node.domain else ''}"
                  f"{node.op_type}", flush=True)
            bad += 1
    return bad


def to_saved_model(job: dict) -> str:
    import numpy as np
    import onnx2tf

    if not os.path.exists(SAMPLE):  # onnx2tf downloads this for 3-channel inputs otherwise (fails offline)
        rng = np.random.default_rng(0)
        np.save(SAMPLE, rng.random((20, 128, 128, 3), dtype=np.float32))
    out_dir = job.get("saved_model") or os.path.join(job["workdir"], "saved_model")
    model = onnx2tf.convert(
        input_onnx_file_path=job["onnx"],
        output_folder_path=out_dir,
        keep_ncw_or_nchw_or_ncdhw_input_names=job["keep_nchw"] or None,
        keep_shape_absolutely_input_names=job.get("keep_shape") or None,
        replace_to_pseudo_operators=job.get("pseudo_ops") or None,
        output_signaturedefs=True,
        copy_onnx_input_output_names_to_tflite=False,
        non_verbose=False,
        verbosity="info",
    )
    layouts = getattr(model, "onnx_output_layouts", None) or {}
    return restore_output_layout(out_dir, job, layouts)


def restore_output_layout(saved: str, job: dict, layouts: dict) -> str:
    """onnx2tf leaves 3-D+ outputs channel-last, may move an output's unit dims, and gives rank-0 inputs a batch
    dim (shape [None]); transpose or reshape the outputs back to the source's shapes and take the scalars as
    scalars, inside the model.

    Returns the SavedModel to convert: ``saved`` itself, or a wrapper beside it with the ONNX input/output shapes.
    """
    import tensorflow as tf

    wrapped = saved.rstrip("/") + "_io"
    if os.path.isfile(os.path.join(wrapped, "saved_model.pb")):
        return wrapped
    imported = tf.saved_model.load(saved)
    fn = imported.signatures["serving_default"]
    perms = _output_perms(fn.structured_outputs, job, layouts)
    shapes = _unit_dim_moves(fn.structured_outputs, job, perms)
    in_spec = fn.structured_input_signature[1]
    scalars = _scalar_inputs(in_spec, job)
    if not perms and not shapes and not scalars:
        return saved
    in_names = list(in_spec)
    specs = [tf.TensorSpec([] if n in scalars else in_spec[n].shape, in_spec[n].dtype, name=n) for n in in_names]

    @tf.function(input_signature=specs)
    def serve(*args):
        res = fn(**{n: tf.reshape(a, [1]) if n in scalars else a for n, a in zip(in_names, args)})
        res = {k: tf.reshape(v, shapes[k]) if k in shapes else v for k, v in res.items()}
        return {k: tf.transpose(v, perms[k]) if k in perms else v for k, v in res.items()}

    module = tf.Module()
    module.inner = imported
    module.serve = serve
    tf.saved_model.save(module, wrapped, signatures={"serving_default": serve.get_concrete_function()})
    if perms:
        print(f"EDGEKIT-NOTE outputs {sorted(perms)} transposed back to the source's channel-first layout", flush=True)
    if shapes:
        print(f"EDGEKIT-NOTE outputs {sorted(shapes)} reshaped to the source's shape (unit dims moved)", flush=True)
    if scalars:
        print(f"EDGEKIT-NOTE inputs {sorted(scalars)} taken as scalars like the source's", flush=True)
    return wrapped


def _output_perms(outs: dict, job: dict, layouts: dict) -> dict[str, list[int]]:
    """Signature output key -> the permutation that puts onnx2tf's channel-last output back in the source's layout."""
    want = job.get("output_shapes") or []
    names = job.get("output_names") or []
    keys = sorted(outs, key=lambda k: int(k.rsplit("_", 1)[1]) if re.fullmatch(r"output_\d+", k) else 1 << 30)
    perms = {}
    for i, key in enumerate(keys):
        if i >= len(want) or want[i] is None:
            continue
        have = outs[key].shape.as_list()
        src = want[i]
        rank = len(src)
        if rank < 3 or len(have) != rank:
            continue
        to_first = [0, rank - 1, *range(1, rank - 1)]  # NHWC -> NCHW
        nhwc = layouts.get(names[i]) if i < len(names) else None
        permuted = [have[j] for j in to_first]
        fits = all(a is None or b is None or b < 0 or a == b for a, b in zip(permuted, src))
        same = all(a is None or b is None or b < 0 or a == b for a, b in zip(have, src))
        if fits and (nhwc or (nhwc is None and not same)):
            perms[key] = to_first
    return perms


def _unit_dim_moves(outs: dict, job: dict, perms: dict) -> dict[str, list[int]]:
    """Signature output key -> the source's static shape, for outputs that have it but for where their unit dims
    sit: the same data in the same order. onnx2tf's Concat picks its axis by comparing values up to a transpose,
    so silero-vad's ``stateN [2, 1, 128]``, two ``[1, 1, 128]`` states joined on axis 0, came out [1, 2, 128]."""
    want = job.get("output_shapes") or []
    keys = sorted(outs, key=lambda k: int(k.rsplit("_", 1)[1]) if re.fullmatch(r"output_\d+", k) else 1 << 30)
    shapes = {}
    for key, src in zip(keys, want):
        have = outs[key].shape.as_list()
        if key in perms or src is None or have == src or any(d is None or d < 0 for d in have + src):
            continue
        if [d for d in have if d != 1] == [d for d in src if d != 1]:
            shapes[key] = src
    return shapes


def _scalar_inputs(in_spec: dict, job: dict) -> set[str]:
    """Signature input keys of the source's rank-0 inputs that onnx2tf made rank 1 (silero-vad's ``sr``)."""
    ranks = dict(zip(job.get("input_names") or [], job.get("input_ranks") or []))
    scalar = {_norm(n) for n, r in ranks.items() if r == 0}
    return {k for k, spec in in_spec.items() if _norm(k) in scalar and spec.shape.rank == 1}


def _norm(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", name).lower()


def representative(job: dict, signature):
    """Yield calibration samples keyed by the SavedModel signature's input names."""
    import numpy as np

    data = np.load(job["calibration"])
    onnx_names = job["input_names"]
    spec = signature.structured_input_signature[1]
    keys = list(spec)
    mapping = {}
    for name in onnx_names:
        hit = [k for k in keys if k == name] or [k for k in keys if _norm(k) == _norm(name)]
        if not hit and len(keys) == len(onnx_names) == 1:
            hit = keys
        if not hit:
            raise SystemExit(f"EDGEKIT-ERROR calibration input {name!r} has no match among {keys}")
        mapping[hit[0]] = name
    n = min(len(data[name]) for name in onnx_names)
    n = min(n, int(job.get("max_samples", 200)))

    def gen():
        for i in range(n):
            yield {k: data[src][i].astype(spec[k].dtype.as_numpy_dtype) for k, src in mapping.items()}
    return gen


def to_tflite(job: dict, saved_model: str, precision: str, out: str) -> dict:
    import tensorflow as tf

    info = {"precision": precision, "out": out}

    def make():
        conv = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if precision == "fp16":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.target_spec.supported_types = [tf.float16]
        elif precision == "int8-dynamic":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        elif precision == "int8":
            loaded = tf.saved_model.load(saved_model)
            sig = loaded.signatures["serving_default"]
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = representative(job, sig)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return conv

    stage(f"tflite-{precision}")
    blob = None
    if precision == "int8" and job.get("int8_tune", True):
        try:
            blob = tuned_int8(job, make(), info)
        except Exception as exc:  # private TF quantizer API moved or failed: plain full-integer conversion below
            print(f"EDGEKIT-NOTE tuned int8 failed ({str(exc).splitlines()[0][:200]}); plain int8 conversion",
                  flush=True)
    if blob is None:
        conv = make()
        try:
            blob = conv.convert()
        except Exception as exc:  # some op has no int8 kernel: allow float fallback for it
            if precision != "int8":
                raise
            print(f"EDGEKIT-NOTE int8-only conversion failed ({str(exc).splitlines()[0][:200]}); "
                  f"retrying with float fallback for ops without int8 kernels", flush=True)
            conv = make()
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
            blob = conv.convert()
            info["float_fallback"] = True
    blob, info["io_order_fixed"] = keep_io_order(blob, job["input_names"], job.get("output_names") or [])
    with open(out, "wb") as f:
        f.write(blob)
    return info


WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
LAYOUT = ("TRANSPOSE", "RESHAPE", "PAD", "PADV2")


def _graph(blob: bytes):
    """(model object, [(op name, op object)]) of the first subgraph of a .tflite blob."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils as fu

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = fu.convert_bytearray_to_object(bytearray(blob))
    codes = [names.get(max(c.builtinCode, c.deprecatedBuiltinCode)) for c in model.operatorCodes]
    return model, [(codes[op.opcodeIndex], op) for op in model.subgraphs[0].operators]


def input_chain(calibrated: bytes) -> list[str]:
    """Output tensor names of the ops that read a float model input: layout ops, then the first weighted op.

    Quantizing the image itself and the stem conv costs much of the int8 error of CNNs (EfficientNet-Lite0:
    top-1 agreement 0.906 -> 0.926 when kept float) for a tiny share of the compute. Empty when no weighted
    op is reached that way (token ids, an embedding lookup first).
    """
    model, ops = _graph(calibrated)
    sg = model.subgraphs[0]
    frontier = {i for i in sg.inputs if sg.tensors[i].type == 0}  # TensorType.FLOAT32
    keep: list[str] = []
    weighted = False
    for name, op in ops:
        if not frontier.intersection(op.inputs) or name not in LAYOUT + WEIGHTED:
            continue
        keep.extend(sg.tensors[i].name.decode() for i in op.outputs)
        if name in WEIGHTED:
            weighted = True
        else:
            frontier.update(op.outputs)
    return keep if weighted else []


def sensitive_layers(calibrated: bytes, deny: list[str], feeds: list, limit: float = 1.0) -> list[str]:
    """Layers whose int8 output error alone (TF's QuantizationDebugger, input from the int8 layer before)
    exceeds ``limit`` quantization steps RMS; on EfficientNet-Lite0 only the first depthwise conv (2.9 steps,
    all others <= 0.6)."""
    import csv
    import io
    import math

    import tensorflow as tf
    from tensorflow.lite.python import convert

    debug = convert.mlir_quantize(calibrated, enable_numeric_verify=True, denylisted_nodes=deny or None)
    dbg = tf.lite.experimental.QuantizationDebugger(quant_debug_model_content=debug, debug_dataset=lambda: iter(feeds))
    dbg.run()
    buf = io.StringIO()
    dbg.layer_statistics_dump(buf)
    rows = csv.DictReader(io.StringIO(buf.getvalue()))
    return [r["tensor_name"] for r in rows
            if float(r["scale"]) > 0 and math.sqrt(float(r["mean_squared_error"])) / float(r["scale"]) > limit]


def tuned_int8(job: dict, conv, info: dict) -> bytes:
    """Full-integer int8 with the input chain (and error-prone layers) kept float, then GPTQ + bias correction.

    Calibrates once (``_experimental_calibrate_only``), quantizes with ``mlir_quantize`` and a denylist, then
    re-rounds the int8 weights against the calibrated float model (``tune``). EfficientNet-Lite0, 256 held-out
    crops: top-1 agreement with fp32 0.906 -> 0.973, mean logit cosine 0.9906 -> 0.9986, same size and speed.
    """
    from tensorflow.lite.python import convert

    conv.experimental_mlir_quantizer = True
    conv._experimental_calibrate_only = True  # noqa: SLF001 - TF's own QuantizationDebugger does the same
    calibrated = conv.convert()
    gen = conv.representative_dataset
    feeds = list(getattr(gen, "input_gen", gen)())  # the converter wraps it in a RepresentativeDataset
    deny = input_chain(calibrated) if job.get("int8_float_input", True) else []
    deny += job.get("int8_float_nodes") or []
    try:
        if job.get("int8_auto_float", True):
            sig_inputs = _ordered(calibrated, feeds)
            deny += [n for n in sensitive_layers(calibrated, deny, sig_inputs[::max(1, len(feeds) // 16)])
                     if n not in deny]
    except Exception as exc:  # the debugger is experimental: go on without it
        print(f"EDGEKIT-NOTE sensitivity check skipped ({str(exc).splitlines()[0][:200]})", flush=True)
    blob = convert.mlir_quantize(calibrated, denylisted_nodes=deny or None)
    blob = tune(blob, calibrated, feeds)
    info["float_nodes"] = deny
    model, ops = _graph(blob)
    sg = model.subgraphs[0]
    loose = [name for name, op in ops if name not in ("QUANTIZE", "DEQUANTIZE") and op.outputs
             and sg.tensors[op.outputs[0]].type == 0 and sg.tensors[op.outputs[0]].name.decode() not in deny]
    if loose:
        info["float_fallback"] = True
        print(f"EDGEKIT-NOTE ops left float (no int8 kernel): {sorted(set(loose))}", flush=True)
    return blob


def _ordered(blob: bytes, feeds: list) -> list:
    """Signature-keyed samples as lists in the interpreter's input order (what QuantizationDebugger feeds)."""
    import tensorflow as tf

    details = tf.lite.Interpreter(model_content=blob).get_input_details()
    keys = [re.sub(r"^serving_default_|:\d+$", "", d["name"]) for d in details]
    return [[f[k] for k in keys] for f in feeds]


def _patches(x, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, same: bool):
    """Conv input ``x`` [H, W, C] -> patches [oh, ow, kh, kw, C], padded the way TensorFlow pads SAME."""
    import numpy as np

    h, w, _ = x.shape
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if same:
        oh, ow = -(-h // sh), -(-w // sw)
        ph, pw = max((oh - 1) * sh + eh - h, 0), max((ow - 1) * sw + ew - w, 0)
        x = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (eh, ew), axis=(0, 1))[::sh, ::sw, :, ::dh, ::dw]
    return win.transpose(0, 1, 3, 4, 2)


def _gptq(w, h, scale, qmax: int = 127):
    """GPTQ rounding of int weights [rows, cols]: converters/qtune.py's, copied beside this worker."""
    from qtune import gptq

    return gptq(w, h, scale, qmax)


def tune(qblob: bytes, calibrated: bytes, feeds: list, max_samples: int = 80) -> bytes:
    """Re-round the int8 weights of FULLY_CONNECTED and 1x1 CONV_2D with GPTQ, then correct the int32 bias of
    every int8 conv/FC for the mean output shift ``E[(W_q - W) x]`` (Nagel et al., 2019).

    Statistics come from the calibrated float model (same tensor names as ``qblob``) run on ``feeds``.
    """
    import numpy as np
    import tensorflow as tf
    from tensorflow.lite.python import schema_py_generated as schema

    qm, qops = _graph(qblob)
    fm, fops = _graph(calibrated)
    qsg, fsg = qm.subgraphs[0], fm.subgraphs[0]
    by_out = {fsg.tensors[op.outputs[0]].name: (name, op) for name, op in fops}
    targets = []
    for name, op in qops:
        if name not in WEIGHTED or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        wt, bt = qsg.tensors[op.inputs[1]], qsg.tensors[op.inputs[2]]
        if wt.type != schema.TensorType.INT8 or bt.type != schema.TensorType.INT32:
            continue
        fname, fop = by_out.get(qsg.tensors[op.outputs[0]].name, (None, None))
        if fname != name:
            continue
        ft = fsg.tensors[fop.inputs[1]]
        wf = np.frombuffer(bytes(fm.buffers[ft.buffer].data), np.float32).reshape(ft.shape).astype(np.float64)
        pointwise = name == "FULLY_CONNECTED" or (name == "CONV_2D" and wf.shape[1:3] == (1, 1))
        targets.append({"kind": name, "op": op, "fop": fop, "wf": wf, "gptq": pointwise, "n": 0, "m": 0.0, "h": 0.0})
    if not targets:
        return qblob
    it = tf.lite.Interpreter(model_content=bytes(calibrated), experimental_preserve_all_tensors=True)
    run = it.get_signature_runner()
    for feed in feeds[:max_samples]:
        run(**feed)
        for t in targets:
            x = it.get_tensor(t["fop"].inputs[0]).astype(np.float64)
            if t["kind"] == "FULLY_CONNECTED":
                p = x.reshape(-1, x.shape[-1])
            else:
                o = t["fop"].builtinOptions
                kh, kw = t["wf"].shape[1:3]
                p = _patches(x[0], kh, kw, o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor,
                             o.padding == schema.Padding.SAME).reshape(-1, kh * kw * x.shape[-1])
            t["m"] = t["m"] + p.mean(0)
            if t["gptq"]:
                t["h"] = t["h"] + p.T @ p / len(p)
            t["n"] += 1
    counts = [0, 0]
    for t in targets:
        wt, bt = qsg.tensors[t["op"].inputs[1]], qsg.tensors[t["op"].inputs[2]]
        q = np.frombuffer(bytes(qm.buffers[wt.buffer].data), np.int8).reshape(wt.shape).astype(np.int64)
        wf = t["wf"]
        if t["kind"] == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C]: one row per channel, patch order kh, kw, C
            rows_f, rows_q = wf.reshape(-1, wf.shape[-1]).T, q.reshape(-1, q.shape[-1]).T
        else:  # OHWI / [O, I]
            rows_f, rows_q = wf.reshape(wf.shape[0], -1), q.reshape(q.shape[0], -1)
        scale = np.broadcast_to(np.asarray(wt.quantization.scale, np.float64), rows_f.shape[:1])
        if t["gptq"] and t["n"]:
            try:
                rows_q = _gptq(rows_f, t["h"] / t["n"], scale, qmax=max(int(np.abs(q).max()), 1))
                qm.buffers[wt.buffer].data = rows_q.reshape(q.shape).astype(np.int8).view(np.uint8).ravel()
                counts[0] += 1
            except np.linalg.LinAlgError:
                pass
        if t["n"]:
            mean = t["m"] / t["n"]
            dw = rows_q * scale[:, None] - rows_f
            shift = (dw * mean.reshape(-1, dw.shape[0]).T).sum(1) if t["kind"] == "DEPTHWISE_CONV_2D" else dw @ mean
            b = np.frombuffer(bytes(qm.buffers[bt.buffer].data), np.int32).astype(np.float64)
            bscale = np.asarray(bt.quantization.scale, np.float64)
            new = np.clip(np.round(b - shift / bscale), -2**31, 2**31 - 1).astype(np.int32)
            qm.buffers[bt.buffer].data = new.view(np.uint8).ravel()
            counts[1] += 1
    print(f"EDGEKIT-NOTE int8 tuning: GPTQ on {counts[0]}, bias correction on {counts[1]} of {len(targets)} "
          f"int8 conv/FC layers", flush=True)
    from tensorflow.lite.tools import flatbuffer_utils as fu

    return bytes(fu.convert_object_to_bytearray(qm))


def keep_io_order(blob: bytes, input_names: list[str], output_names: list[str]) -> tuple[bytes, bool]:
    """Make the model's input/output order the ONNX source's.

    LiteRT lists signature inputs sorted by name (and outputs ``output_0, output_1, output_10 ...``), so a
    source whose order is not sorted would be fed by position wrongly. Then the signature is dropped, the
    subgraph's inputs/outputs are put in source order and named like the source: runtimes bind by index. Only
    the signature's subgraph changes (a recurrent model also has its WHILE loop's cond/body subgraphs).
    """
    from tensorflow.lite.tools import flatbuffer_utils as fu

    model = fu.convert_bytearray_to_object(bytearray(blob))
    if len(model.signatureDefs) != 1:
        return blob, False
    sig = model.signatureDefs[0]
    ins = {_name(tm.name): tm.tensorIndex for tm in sig.inputs}
    outs = {_name(tm.name): tm.tensorIndex for tm in sig.outputs}
    out_keys = sorted(outs, key=lambda k: (int(k.rsplit("_", 1)[1]) if re.fullmatch(r"output_\d+", k) else 1 << 30, k))
    if list(ins) == list(input_names) and sorted(input_names) == list(input_names) and sorted(outs) == out_keys:
        return blob, False
    order = []
    for name in input_names:
        hit = name if name in ins else next((k for k in ins if _norm(k) == _norm(name)), None)
        if hit is None:
            return blob, False
        order.append(ins[hit])
    sg = model.subgraphs[sig.subgraphIndex]
    sg.inputs = order
    sg.outputs = [outs[k] for k in out_keys]
    for idx, name in zip(order, input_names):
        sg.tensors[idx].name = name.encode()
    if len(output_names) == len(out_keys):
        for idx, name in zip(sg.outputs, output_names):
            sg.tensors[idx].name = name.encode()
    model.signatureDefs = []
    return bytes(fu.convert_object_to_bytearray(model)), True


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def main() -> int:
    # onnx2tf runs the onnxsim command line of this environment: its bin folder must be on PATH
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    with open(sys.argv[1]) as f:
        job = json.load(f)
    stage("check-ops")
    if check_ops(job["onnx"]):
        return 3
    stage("onnx2tf")
    saved = job.get("saved_model")
    if saved and os.path.isfile(os.path.join(saved, "saved_model.pb")):
        print("EDGEKIT-NOTE reusing the SavedModel of an earlier export of this source", flush=True)
        saved = restore_output_layout(saved, job, {})
    else:
        saved = to_saved_model(job)
    for target in job["targets"]:  # one TF start-up and one onnx2tf run for every precision asked
        info = to_tflite(job, saved, target["precision"], target["out"])
        print("EDGEKIT-RESULT " + json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
