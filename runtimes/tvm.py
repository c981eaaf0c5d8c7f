"""TVM backend: runs a Relax VM executable (``export_library`` .so) described by a JSON signature.

The JSON sidecar (same stem, ``.json``) holds ``{"format": "edgekit-tvm", "library": ..., "inputs": [...],
"outputs": [...], "target": ...}``. Only the TVM runtime is loaded unless the compiler was already imported in
this process: ``TVM_USE_RUNTIME_LIB=1`` is set just around ``import tvm`` and removed right after, so neither
later code nor child processes inherit it (compiles run in their own child, see converters/tvm_child.py).

Memory: ``tvm.runtime.load_module`` never frees what it loads (about the weights' size per call), so loaded
libraries are cached per file content (sha256) and shared by every session of that file; ``close()`` drops the
session's VMs. Reopening a model costs no memory after its first open.

Threads: TVM's CPU thread pool belongs to the OS thread that calls the kernels, and its capacity is fixed when
that thread first runs TVM code, from ``TVM_NUM_THREADS`` (unset: TVM's default, half the hardware threads on
x86). A session opened with ``threads=N`` sets the calling thread's pool to N workers before each call
(``runtime.config_threadpool``, ~3 us, only when the thread's setting changes), so sessions with different
counts can share a process and even a thread. So that later pools can hold N workers, opening it raises
``TVM_NUM_THREADS`` to at least N (when unset: to max(N, CPU count)), which is process-wide: sessions without
``threads`` then default to that in threads that had not run TVM yet. A thread whose pool was sized smaller
before cannot grow: the session then runs with what it has and warns once (RuntimeWarning).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import queue
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError, ModelLoadError, RunError
from edgekit.formats import tvm_sidecar
from edgekit.specs import TensorSpec

from . import register
from .base import Backend, Runner, read_tagged_json

SIGNATURE_FORMAT = "edgekit-tvm"
RUNTIME_ONLY_ENV = "TVM_USE_RUNTIME_LIB"


def import_tvm_runtime():
    """Import TVM, runtime-only unless the compiler is already loaded; the switch does not outlive the import."""
    if "tvm" not in sys.modules and RUNTIME_ONLY_ENV not in os.environ:
        os.environ[RUNTIME_ONLY_ENV] = "1"
        try:
            import tvm  # noqa: F401
        finally:
            os.environ.pop(RUNTIME_ONLY_ENV, None)
    import tvm
    from tvm.runtime.vm import VirtualMachine

    return tvm, VirtualMachine


_MODULES: dict[str, Any] = {}  # sha256 of a library file -> its loaded module (load_module never frees)
_MODULES_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_library(tvm, lib_path: Path):
    """The loaded module of ``lib_path``, loaded once per file content in this process."""
    key = file_sha256(lib_path)
    with _MODULES_LOCK:
        if key not in _MODULES:
            try:
                _MODULES[key] = tvm.runtime.load_module(str(lib_path))
            except Exception as exc:
                raise ModelLoadError(f"{lib_path}: cannot load TVM library: {str(exc).splitlines()[0]}") from None
        return _MODULES[key]


def read_signature(path: Path) -> tuple[dict, Path]:
    """(signature dict, library path) for a TVM ``.so`` or its ``.json`` sidecar."""
    path = Path(path)
    meta_path = path if path.suffix == ".json" else tvm_sidecar(path)
    if not meta_path.is_file():
        raise ModelLoadError(f"{path}: no signature file {meta_path.name} next to the TVM library")
    meta = read_tagged_json(meta_path, SIGNATURE_FORMAT, "an edgekit TVM signature")
    if not isinstance(meta.get("inputs"), list) or not isinstance(meta.get("outputs"), list):
        raise ModelLoadError(f"{meta_path}: the signature needs lists of inputs and outputs")
    lib = meta_path.parent / str(meta.get("library", meta_path.with_suffix(".so").name))
    if lib.resolve().parent != meta_path.parent.resolve():
        raise ModelLoadError(f"{meta_path}: library path {meta.get('library')!r} leaves its folder")
    if not lib.is_file():
        raise ModelLoadError(f"{meta_path}: library {lib.name} is missing")
    return meta, lib


_POOL = threading.local()  # per OS thread: .original (workers before edgekit set them), .current, .warned


def check_threads(threads: Any) -> int | None:
    """``threads`` as given to ``open``: None, or an integer >= 1 (InputError otherwise)."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise InputError(f"tvm: threads must be an integer >= 1, got {threads!r}")
    return int(threads)


def raise_pool_capacity(threads: int) -> None:
    """Let TVM pools created from now on hold ``threads`` workers (TVM reads TVM_NUM_THREADS once per thread)."""
    cur = os.environ.get("TVM_NUM_THREADS", "").strip()
    try:
        cap = int(cur) if cur else 0
    except ValueError:
        cap = 0
    if cap < threads:
        os.environ["TVM_NUM_THREADS"] = str(max(threads, os.cpu_count() or 1) if not cap else threads)


def set_thread_pool(tvm, threads: int | None) -> int:
    """Size the calling thread's TVM pool for one call: ``threads`` workers, or with None the count this thread
    had before edgekit changed it. Returns the workers in use (TVM's own ``runtime.NumThreads``)."""
    state = _POOL.__dict__
    if state.get("current", "unset") == threads:
        return state["in_use"]
    num_threads = tvm.get_global_func("runtime.NumThreads")
    if "original" not in state:
        if threads is None:  # never touched by edgekit: TVM's own sizing, nothing to do
            state["current"] = None
            state["in_use"] = int(num_threads())
            return state["in_use"]
        state["original"] = int(num_threads())
    want = threads if threads is not None else state["original"]
    tvm.get_global_func("runtime.config_threadpool")(1, want)  # 1 = kBig, TVM's default affinity mode
    in_use = int(num_threads())
    if threads is not None and in_use < threads and threads not in state.setdefault("warned", set()):
        state["warned"].add(threads)
        warnings.warn(f"tvm: threads={threads} asked, but this thread's TVM pool holds {in_use} worker(s): TVM sized "
                      "it when the thread first ran TVM code (TVM_NUM_THREADS was lower then). Open sessions with "
                      f"threads before running TVM in this thread, or start with TVM_NUM_THREADS={threads}",
                      RuntimeWarning, stacklevel=4)
    state["current"], state["in_use"] = threads, in_use
    return in_use


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
        self._lib = load_library(tvm, lib_path)
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
        #: TVM worker threads per call (None: TVM's sizing); see the module doc
        self.threads = threads
        if threads is not None:
            raise_pool_capacity(threads)

    def run(self, feeds, output_names):
        tvm, pool, make = self._tvm, self._pool, self._make
        if pool is None or make is None:
            raise RunError("TVM: the session is closed")
        try:
            vm = pool.get_nowait()
        except queue.Empty:
            vm = make()
        try:
            if self._dev.dlpack_device_type() == 1:
                set_thread_pool(tvm, self.threads)
            args = [_to_tvm(tvm, feeds[s.name], self._dev) for s in self.inputs]
            res = vm[self._entry](*args)
        except Exception as exc:
            raise RunError(f"TVM failed: {str(exc).splitlines()[0]}") from exc
        finally:
            pool.put(vm)
        values = [res] if hasattr(res, "numpy") else list(res)
        out = {}
        for spec, value in zip(self.outputs, values):
            if output_names is None or spec.name in output_names:
                # zero-copy on the CPU: the VM allocates fresh outputs per call
                out[spec.name] = np.from_dlpack(value) if self._dev.dlpack_device_type() == 1 else value.numpy()
        return out

    def close(self) -> None:
        """Drop this session's VMs (the loaded library stays cached for the next session of the same file)."""
        self._pool, self._make = None, None


@register
class TvmBackend(Backend):
    name = "tvm"
    formats = ("tvm",)
    extra = "tvm"
    description = "Apache TVM Relax VM (runtime only)"

    def _probe(self) -> str | None:
        if importlib.util.find_spec("tvm") is None:
            return "apache-tvm is not installed; install it with: pip install 'edgekit-sdk[tvm]'"
        return None

    def version(self) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("apache-tvm")
        except PackageNotFoundError:
            return None

    def open(self, path: Path, threads: int | None = None, **options: Any) -> Runner:
        """``threads``: TVM CPU worker threads for this session's calls (see the module doc)."""
        if options:
            raise InputError(f"unknown option(s) for tvm: {', '.join(sorted(options))}")
        threads = check_threads(threads)
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
