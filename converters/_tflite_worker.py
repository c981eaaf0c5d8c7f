"""Runs INSIDE the onnx2tf tool environment (numpy 1, TensorFlow 2.19): ONNX -> SavedModel -> .tflite.

Not imported by edgekit. Invoked as ``python _tflite_worker.py JOB.json``; the job names the ONNX copy,
the targets (precision, output file), the inputs to keep in NCHW, and an optional calibration ``.npz``.
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
        replace_to_pseudo_operators=job.get("pseudo_ops") or None,
        output_signaturedefs=True,
        copy_onnx_input_output_names_to_tflite=False,
        non_verbose=False,
        verbosity="info",
    )
    layouts = getattr(model, "onnx_output_layouts", None) or {}
    return restore_output_layout(out_dir, job, layouts)


def restore_output_layout(saved: str, job: dict, layouts: dict) -> str:
    """onnx2tf leaves 3-D+ outputs channel-last; transpose them back to the source's layout inside the model.

    Returns the SavedModel to convert: ``saved`` itself, or a wrapper beside it whose outputs have the ONNX shapes.
    """
    import tensorflow as tf

    wrapped = saved.rstrip("/") + "_io"
    if os.path.isfile(os.path.join(wrapped, "saved_model.pb")):
        return wrapped
    want = job.get("output_shapes") or []
    names = job.get("output_names") or []
    imported = tf.saved_model.load(saved)
    fn = imported.signatures["serving_default"]
    outs = fn.structured_outputs
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
    if not perms:
        return saved
    in_spec = fn.structured_input_signature[1]
    in_names = list(in_spec)
    specs = [tf.TensorSpec(in_spec[n].shape, in_spec[n].dtype, name=n) for n in in_names]

    @tf.function(input_signature=specs)
    def serve(*args):
        res = fn(**dict(zip(in_names, args)))
        return {k: tf.transpose(v, perms[k]) if k in perms else v for k, v in res.items()}

    module = tf.Module()
    module.inner = imported
    module.serve = serve
    tf.saved_model.save(module, wrapped, signatures={"serving_default": serve.get_concrete_function()})
    print(f"EDGEKIT-NOTE outputs {sorted(perms)} transposed back to the source's channel-first layout", flush=True)
    return wrapped


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
            yield {k: data[src][i:i + 1].astype(spec[k].dtype.as_numpy_dtype) for k, src in mapping.items()}
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


def keep_io_order(blob: bytes, input_names: list[str], output_names: list[str]) -> tuple[bytes, bool]:
    """Make the model's input/output order the ONNX source's.

    LiteRT lists signature inputs sorted by name (and outputs ``output_0, output_1, output_10 ...``), so a
    source whose order is not sorted would be fed by position wrongly. Then the signature is dropped, the
    subgraph's inputs/outputs are put in source order and named like the source: runtimes bind by index.
    """
    from tensorflow.lite.tools import flatbuffer_utils as fu

    model = fu.convert_bytearray_to_object(bytearray(blob))
    if not model.signatureDefs or len(model.subgraphs) != 1:
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
    sg = model.subgraphs[0]
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
