"""TVM backend: runs a Relax VM executable (``export_library`` .so) described by a JSON signature.

The JSON sidecar (same stem, ``.json``) holds ``{"format": "edgekit-tvm", "library": ..., "inputs": [...],
"outputs": [...], "target": ...}``. Only the TVM runtime is loaded (``TVM_USE_RUNTIME_LIB=1``) unless the
compiler was already imported in this process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError, ModelLoadError, RunError
from edgekit.formats import tvm_sidecar
from edgekit.specs import TensorSpec

from . import register
from .base import Backend, Runner

SIGNATURE_FORMAT = "edgekit-tvm"


def import_tvm_runtime():
    """Import TVM, runtime-only unless the compiler is already loaded."""
    if "tvm" not in sys.modules:
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    import tvm
    from tvm.runtime.vm import VirtualMachine

    return tvm, VirtualMachine


def read_signature(path: Path) -> tuple[dict, Path]:
    """(signature dict, library path) for a TVM ``.so`` or its ``.json`` sidecar."""
    path = Path(path)
    meta_path = path if path.suffix == ".json" else tvm_sidecar(path)
    if not meta_path.is_file():
        raise ModelLoadError(f"{path}: no signature file {meta_path.name} next to the TVM library")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{meta_path}: invalid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != SIGNATURE_FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelLoadError(f"{meta_path}: not an edgekit TVM signature (format={fmt!r})")
    if not isinstance(meta.get("inputs"), list) or not isinstance(meta.get("outputs"), list):
        raise ModelLoadError(f"{meta_path}: the signature needs lists of inputs and outputs")
    lib = meta_path.parent / str(meta.get("library", meta_path.with_suffix(".so").name))
    if lib.resolve().parent != meta_path.parent.resolve():
        raise ModelLoadError(f"{meta_path}: library path {meta.get('library')!r} leaves its folder")
    if not lib.is_file():
        raise ModelLoadError(f"{meta_path}: library {lib.name} is missing")
    return meta, lib


def _to_tvm(tvm, a: np.ndarray, dev):
    """A TVM tensor viewing ``a`` without a copy when it is C-contiguous and 64-byte aligned, else a copy."""
    if dev.dlpack_device_type() == 1 and a.flags.c_contiguous and a.ctypes.data % 64 == 0 and a.dtype != np.bool_:
        try:
            return tvm.runtime.from_dlpack(a)
        except Exception:  # noqa: BLE001 - any refusal falls back to a copy
            pass
    # (np.ascontiguousarray would turn a 0-d array into shape (1,))
    return tvm.runtime.tensor(a if a.flags.c_contiguous else np.ascontiguousarray(a), dev)


class TvmRunner(Runner):
    backend = "tvm"

    def __init__(self, meta: dict, lib_path: Path, threads: int | None):
        tvm, VirtualMachine = import_tvm_runtime()
        self._tvm = tvm
        try:
            self._lib = tvm.runtime.load_module(str(lib_path))
        except Exception as exc:
            raise ModelLoadError(f"{lib_path}: cannot load TVM library: {str(exc).splitlines()[0]}") from None
        self._entry = meta.get("entry", "main")
        self._dev = tvm.metal() if meta.get("device") == "metal" else tvm.cpu()
        self._make = lambda: VirtualMachine(self._lib, self._dev)
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        try:
            self._pool.put(self._make())
        except Exception as exc:
            raise ModelLoadError(f"{lib_path}: not a Relax VM executable: {str(exc).splitlines()[0]}") from None
        self.inputs = [TensorSpec.from_json(s) for s in meta["inputs"]]
        self.outputs = [TensorSpec.from_json(s) for s in meta["outputs"]]
        self.target = meta.get("target")
        if threads:
            os.environ.setdefault("TVM_NUM_THREADS", str(int(threads)))

    def run(self, feeds, output_names):
        tvm = self._tvm
        try:
            vm = self._pool.get_nowait()
        except queue.Empty:
            vm = self._make()
        try:
            args = [_to_tvm(tvm, feeds[s.name], self._dev) for s in self.inputs]
            res = vm[self._entry](*args)
        except Exception as exc:
            raise RunError(f"TVM failed: {str(exc).splitlines()[0]}") from exc
        finally:
            self._pool.put(vm)
        values = [res] if hasattr(res, "numpy") else list(res)
        out = {}
        for spec, value in zip(self.outputs, values):
            if output_names is None or spec.name in output_names:
                # zero-copy on the CPU: the VM allocates fresh outputs per call
                out[spec.name] = np.from_dlpack(value) if self._dev.dlpack_device_type() == 1 else value.numpy()
        return out


@register
class TvmBackend(Backend):
    name = "tvm"
    formats = ("tvm",)
    extra = "tvm"
    description = "Apache TVM Relax VM (runtime only)"

    def _probe(self) -> str | None:
        if importlib.util.find_spec("tvm") is None:
            return "apache-tvm is not installed; install it with: pip install 'edgekit[tvm]'"
        return None

    def version(self) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("apache-tvm")
        except PackageNotFoundError:
            return None

    def open(self, path: Path, threads: int | None = None, **options: Any) -> Runner:
        if options:
            raise InputError(f"unknown option(s) for tvm: {', '.join(sorted(options))}")
        meta, lib = read_signature(path)
        return TvmRunner(meta, lib, threads)

    def inspect(self, path: Path) -> dict:
        meta, lib = read_signature(path)
        return {
            "target": meta.get("target"),
            "library": lib.name,
            "source_ops": meta.get("source_ops", {}),
            "ops": meta.get("source_ops", {}),
            "parameters": meta.get("parameters"),
        }
