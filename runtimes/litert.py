"""LiteRT (TFLite) backend: runs ``.tflite`` files with ai_edge_litert, else tflite_runtime.

Tensors are bound by signature (or by index when the model has none), never by the tensor names a
converter happened to emit. A model whose signatures are one graph at several static shapes (same input and
output names, dtypes and ranks: e.g. one signature per sequence-length bucket, sharing the weights) is one
model whose differing dims are dynamic: each call runs the signature whose input shapes equal the fed ones.
One Interpreter is not thread-safe, so a small pool serves concurrent calls.
"""

from __future__ import annotations

import importlib
import importlib.util
import queue
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._quiet import filtered
from edgekit.errors import BackendUnavailable, EdgekitError, InputError, RunError
from edgekit.loader import unreadable_error
from edgekit.specs import TensorSpec

from . import register
from .base import Backend, Runner

_PROVIDERS = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def interpreter_class():
    """The Interpreter class of the preferred installed TFLite runtime."""
    errors = []
    for mod in _PROVIDERS:
        if importlib.util.find_spec(mod.split(".")[0]) is None:
            continue
        try:
            return importlib.import_module(mod).Interpreter
        except Exception as exc:  # e.g. tflite_runtime built against numpy 1
            errors.append(f"{mod}: {exc}")
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise BackendUnavailable(
        f"no TFLite runtime is usable{detail}; install it with: pip install 'edgekit-sdk[tflite]'"
    )


#: what LiteRT says when its default XNNPACK delegate refuses a graph it cannot take whole
_DELEGATE_REFUSED = re.compile(r"XNNPack|XNNPACK|failed to prepare", re.IGNORECASE)


def new_interpreter(Interpreter, threads: int | None = None, delegate: str = "xnnpack", **source: Any):
    """An allocated interpreter (``source``: ``model_content=`` or ``model_path=``) and the delegate it runs on.

    LiteRT applies its XNNPACK delegate by default; XNNPACK refuses some graphs outright (an int8 MTCNN ONet from
    onnx2tf: "Node number 26 (TfLiteXNNPackDelegate) failed to prepare"), and LiteRT then fails the whole model.
    Such a model is opened again on LiteRT's builtin kernels alone (slower, same results), delegate ``"none"``
    (which ``delegate="none"`` asks for at once).
    """
    kw = {"num_threads": int(threads)} if threads else {}
    if delegate == "xnnpack":
        try:
            with filtered():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" banner (shown with --verbose)
                interp = Interpreter(**source, **kw)
                interp.allocate_tensors()
            return interp, "xnnpack"
        except (RuntimeError, ValueError) as exc:
            if _resolver(Interpreter) is None or not _DELEGATE_REFUSED.search(str(exc)):
                raise
    interp = Interpreter(**source, **kw,
                         experimental_op_resolver_type=_resolver(Interpreter).BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    return interp, "none"


def _resolver(Interpreter):
    """The ``OpResolverType`` enum of the module ``Interpreter`` comes from, or None (an old tflite-runtime)."""
    return getattr(importlib.import_module(Interpreter.__module__), "OpResolverType", None)


def _clean(name: str) -> str:
    """``serving_default_input:0`` -> ``input``; ``StatefulPartitionedCall:0`` stays meaningful."""
    name = re.sub(r":\d+$", "", name)
    return re.sub(r"^serving_default_", "", name)


def _shape(detail: dict) -> tuple:
    sig = detail.get("shape_signature")
    dims = sig if sig is not None and len(sig) else detail["shape"]
    return tuple(None if int(d) < 0 else int(d) for d in dims)


def shape_buckets(interp) -> dict[str, tuple[dict, dict]] | None:
    """{signature: (input details, output details)} when the model has several signatures that are one graph at
    different static shapes (same input/output names, dtypes and ranks), else None."""
    sigs = interp.get_signature_list()
    if len(sigs) < 2:
        return None
    details = {}
    for key in sigs:
        runner = interp.get_signature_runner(key)
        details[key] = (runner.get_input_details(), runner.get_output_details())
    ins0, outs0 = next(iter(details.values()))
    for ins, outs in details.values():
        for a, b in ((ins, ins0), (outs, outs0)):
            if list(a) != list(b) or any(np.dtype(a[k]["dtype"]) != np.dtype(b[k]["dtype"])
                                         or len(a[k]["shape"]) != len(b[k]["shape"]) for k in a):
                return None
    shapes = [tuple(tuple(int(x) for x in d["shape"]) for d in ins.values()) for ins, _ in details.values()]
    return details if len(set(shapes)) == len(shapes) else None


def _merged(details: list[dict]) -> list[tuple]:
    """Per tensor: the dims all signatures share, None where they differ."""
    keys = list(details[0])
    return [tuple(d0 if all(int(d[k]["shape"][i]) == d0 for d in details) else None
                  for i, d0 in enumerate(int(x) for x in details[0][k]["shape"])) for k in keys]


class LiteRTRunner(Runner):
    backend = "litert"

    def __init__(self, make, first):
        self._make = make
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        interp = first
        sigs = interp.get_signature_list()
        self._sig_key = next(iter(sigs)) if len(sigs) == 1 else None
        buckets = shape_buckets(interp)
        self._buckets: dict[tuple, str] | None = None
        if buckets is not None:
            ins0, outs0 = next(iter(buckets.values()))
            self._in_keys, self._out_keys = list(ins0), list(outs0)
            self._buckets = {tuple(tuple(int(x) for x in d["shape"]) for d in ins.values()): key
                             for key, (ins, _) in buckets.items()}
            self.inputs = [TensorSpec(k, shape, np.dtype(ins0[k]["dtype"]))
                           for k, shape in zip(ins0, _merged([ins for ins, _ in buckets.values()]))]
            self.outputs = [TensorSpec(k, shape, np.dtype(outs0[k]["dtype"]))
                            for k, shape in zip(outs0, _merged([outs for _, outs in buckets.values()]))]
            #: the signature names and the input shapes each one takes
            self.signatures = {key: [tuple(int(x) for x in d["shape"]) for d in ins.values()]
                               for key, (ins, _) in buckets.items()}
        elif self._sig_key is not None:
            runner = interp.get_signature_runner(self._sig_key)
            ins = runner.get_input_details()
            outs = runner.get_output_details()
            self._in_keys = list(ins)
            self._out_keys = list(outs)
            self.inputs = [TensorSpec(k, _shape(d), np.dtype(d["dtype"])) for k, d in ins.items()]
            self.outputs = [TensorSpec(k, _shape(d), np.dtype(d["dtype"])) for k, d in outs.items()]
        else:
            ins = interp.get_input_details()
            outs = interp.get_output_details()
            self._in_index = [d["index"] for d in ins]
            self._out_index = [d["index"] for d in outs]
            self.inputs = [TensorSpec(_clean(d["name"]), _shape(d), np.dtype(d["dtype"])) for d in ins]
            self.outputs = [TensorSpec(_clean(d["name"]), _shape(d), np.dtype(d["dtype"])) for d in outs]
            self._in_shapes = [tuple(d["shape"]) for d in ins]
        self._release(self._wrap(interp))

    def _wrap(self, interp):
        if self._buckets is not None:
            return {key: interp.get_signature_runner(key) for key in self._buckets.values()}
        if self._sig_key is not None:
            return interp.get_signature_runner(self._sig_key)
        return [interp, list(self._in_shapes)]  # each pooled interpreter keeps its own current input shapes

    def _acquire(self):
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            return self._wrap(self._make())

    def _release(self, item) -> None:
        self._pool.put(item)

    def run(self, feeds, output_names):
        item = self._acquire()
        try:
            if self._buckets is not None:
                return self._run_bucket(item, feeds, output_names)
            if self._sig_key is not None:
                res = item(**feeds)
                names = output_names or self._out_keys
                return {n: res[n] for n in names}
            return self._run_indexed(item, feeds, output_names)
        except EdgekitError:
            raise
        except Exception as exc:
            raise RunError(f"LiteRT failed: {exc}") from exc
        finally:
            self._release(item)

    def close(self) -> None:
        while True:
            try:
                self._pool.get_nowait()
            except queue.Empty:
                return

    def _run_bucket(self, runners: dict, feeds, output_names):
        shapes = tuple(tuple(feeds[k].shape) for k in self._in_keys)
        key = self._buckets.get(shapes)
        if key is None:
            have = "; ".join(f"{k}: {' + '.join(str(s) for s in v)}" for k, v in self.signatures.items())
            raise InputError(f"this model is built for fixed input shapes only (one signature each: {have}); "
                             f"got {' + '.join(str(s) for s in shapes)}")
        res = runners[key](**feeds)
        return {n: res[n] for n in (output_names or self._out_keys)}

    def _run_indexed(self, item, feeds, output_names):
        interp, shapes = item
        resized = False
        for i, spec in enumerate(self.inputs):
            value = feeds[spec.name]
            if value.shape != shapes[i]:
                interp.resize_tensor_input(self._in_index[i], value.shape)
                shapes[i] = value.shape
                resized = True
        if resized:
            interp.allocate_tensors()
        for i, spec in enumerate(self.inputs):
            interp.set_tensor(self._in_index[i], feeds[spec.name])
        interp.invoke()
        out = {}
        for spec, idx in zip(self.outputs, self._out_index):
            if output_names is None or spec.name in output_names:
                out[spec.name] = interp.get_tensor(idx).copy()
        return out


@register
class LiteRTBackend(Backend):
    name = "litert"
    formats = ("tflite",)
    extra = "tflite"
    description = "LiteRT / TFLite interpreter (ai-edge-litert, or tflite-runtime)"

    def _probe(self) -> str | None:
        try:
            interpreter_class()
        except BackendUnavailable as exc:
            return str(exc)
        return None

    def version(self) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("ai-edge-litert", "tflite-runtime"):
            try:
                return f"{dist} {version(dist)}"
            except PackageNotFoundError:
                continue
        return None

    def open(self, path: Path, threads: int | None = None, **options: Any) -> Runner:
        if options:
            raise InputError(f"unknown option(s) for litert: {', '.join(sorted(options))}")
        Interpreter = interpreter_class()
        content = Path(path).read_bytes()

        try:
            first, delegate = new_interpreter(Interpreter, threads, model_content=content)
        except Exception as exc:
            raise unreadable_error(path, "tflite", exc) from None

        def make():   # more interpreters for concurrent calls, on the delegate the first one got
            return new_interpreter(Interpreter, threads, delegate, model_content=content)[0]

        runner = LiteRTRunner(make, first)
        runner.delegate = delegate
        return runner

    def inspect(self, path: Path) -> dict:
        Interpreter = interpreter_class()
        try:
            with filtered():
                interp = Interpreter(model_path=str(path))
        except Exception as exc:
            raise unreadable_error(path, "tflite", exc) from None
        ops = interp._get_ops_details()
        produced = {t for op in ops for t in op["outputs"]}
        graph_inputs = {d["index"] for d in interp.get_input_details()}
        params = 0
        for t in interp.get_tensor_details():
            if t["index"] not in produced and t["index"] not in graph_inputs:
                shape = t["shape"]
                params += int(np.prod(shape)) if len(shape) else 1
        return {
            "ops": dict(Counter(op["op_name"] for op in ops).most_common()),
            "nodes": len(ops),
            "parameters": params,
            "signatures": list(interp.get_signature_list()),
        }
