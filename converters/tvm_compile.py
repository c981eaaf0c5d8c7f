"""Compile an ONNX model (or subgraph) with TVM Relax into a library plus its JSON signature, per board.

``compile_onnx`` writes ``OUT.so`` (Apple targets: ``OUT.dylib`` when linked on macOS, else ``OUT.tar`` of Mach-O
objects that ``tvm.runtime.load_module`` links on the Mac; see :func:`library_path`) and ``OUT.json`` (the
signature ``runtimes/tvm.py`` reads).
Boards come from ``edgekit.boards`` profiles (``tvm_target``, ``cross_compiler``); ``"host"`` is this CPU.
Untuned CPU builds use :func:`cpu_pipeline` (vectorizable fast math plus simple schedules for elementwise
and conv-like functions); Apple boards can also get Metal kernels (``device="metal"``). Optional MetaSchedule
tuning caches its logs under ``~/.cache/edgekit/tune/<key>/``. Everything that needs TVM's compiler (compiling,
tuning, the host CPU's name, the frontend's op list) runs in a warm child process (``tvm_child``): a TVM crash or
hang is a ConversionError here, and this process may hold a runtime-only TVM.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._extras import require
from edgekit.errors import BoardError, ConversionError, InputError, MissingExtraError, UnsupportedOpError
from edgekit.specs import TensorSpec

from . import tvm_child

SIGNATURE_FORMAT = "edgekit-tvm"
HOST = "host"


@dataclass(frozen=True)
class BoardTarget:
    """Where TVM code goes: a board name, its TVM target (dict) and the C++ compiler that links for it."""

    board: str
    target: dict
    cc: str | None = None

    @property
    def is_apple(self) -> bool:
        return "apple" in str(self.target.get("mtriple", "")) or self.target.get("kind") == "metal"

    @property
    def is_host(self) -> bool:
        return self.board == HOST

    @property
    def arch(self) -> str:
        triple = str(self.target.get("mtriple", ""))
        return triple.split("-")[0] if triple else platform.machine()


@functools.cache
def host_target() -> dict:
    """The TVM target of this CPU (LLVM's name for it, so vector units are used); asked of the compiler child."""
    require_tvm_installed()
    return tvm_child.call(_host_target_here, what="asking TVM for this CPU's LLVM name")


def _host_target_here() -> dict:
    require_compiler()
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())}


def require_tvm_installed() -> None:
    """MissingExtraError naming the extra when apache-tvm is not installed (without importing it)."""
    import importlib.util

    if importlib.util.find_spec("tvm") is None:
        raise MissingExtraError("apache-tvm is needed for compiling TVM kernels but is not installed; install it "
                                "with: pip install 'edgekit-sdk[tvm]'")


def require_compiler():
    """Import TVM with its compiler in this process; a clear ConversionError when only its runtime is loaded here
    (``TVM_USE_RUNTIME_LIB=1`` before the import, or a runtime-only install without ``libtvm_compiler.so``)."""
    tvm = require("tvm", purpose="compiling TVM kernels")
    if getattr(tvm.base, "_RUNTIME_ONLY", False):
        raise ConversionError(
            "the TVM compiler is not available in this process: TVM was loaded runtime-only (TVM_USE_RUNTIME_LIB=1 "
            "at import, or an install without libtvm_compiler.so); compile through edgekit compile / "
            "compile_onnx, which run TVM in a child process, or reinstall apache-tvm")
    return tvm


def board_target(board: str) -> BoardTarget:
    """The :class:`BoardTarget` of a board profile name, or ``"host"``; unknown boards raise BoardError."""
    if board == HOST:
        return BoardTarget(HOST, host_target(), None)
    from edgekit.boards import get_profile

    profile = get_profile(board)  # raises BoardError listing the known boards
    target = dict(profile.tvm_target)
    if not target:
        raise BoardError(f"board {board!r} has no TVM target in its profile")
    return BoardTarget(profile.name, target, profile.cross_compiler)


#: suffixes a compile output stem may be given with (stripped before the platform's own is added)
OUTPUT_SUFFIXES = (".so", ".dylib", ".tar", ".json")


def library_suffix(apple: bool, system: str | None = None) -> str:
    """The library file suffix for a target: ``.so``; Apple code ``.dylib`` when linked on macOS (``system``
    ``"darwin"``, default: this one), else ``.tar`` (objects only: Apple code cannot be linked elsewhere)."""
    if not apple:
        return ".so"
    return ".dylib" if (system or sys.platform) == "darwin" else ".tar"


def library_path(out: str | Path, apple: bool, system: str | None = None) -> Path:
    """Where a compile to ``out`` (a stem, or a stem with any of :data:`OUTPUT_SUFFIXES`) writes its library;
    the signature goes next to it with ``.json``."""
    out = Path(out)
    if out.suffix in OUTPUT_SUFFIXES:
        out = out.with_suffix("")
    return out.with_name(out.name + library_suffix(apple, system))


def apt_package_for(cc: str) -> str:
    """The Debian package of a cross compiler (``aarch64-linux-gnu-g++`` -> ``g++-aarch64-linux-gnu``)."""
    for tool in ("g++", "gcc"):
        if cc.endswith("-" + tool):
            return f"{tool}-{cc[: -len(tool) - 1]}"
    return cc


def check_cross_compiler(cc: str | None, board: str = "") -> None:
    """Raise ConversionError naming the apt package when ``cc`` is not on PATH."""
    if cc and shutil.which(cc) is None:
        pkg = apt_package_for(cc)
        extra = f" {pkg.replace('g++', 'gcc', 1)}" if pkg.startswith("g++-") else ""
        raise ConversionError(
            f"cross compiler {cc!r} (needed to link TVM kernels{' for board ' + board if board else ''}) is not "
            f"installed; install it with: sudo apt-get install{extra} {pkg}")


def tvm_unsupported_ops(model: Any) -> list[str]:
    """Op types of ``model`` that TVM's Relax ONNX frontend has no converter for."""
    known = frontend_ops()
    return sorted({n.op_type for n in model.graph.node if n.op_type not in known})


@functools.cache
def frontend_ops() -> frozenset[str]:
    """The ONNX op types TVM's Relax frontend converts (asked of the compiler child once per process)."""
    require_tvm_installed()
    return frozenset(tvm_child.call(_frontend_ops_here, what="listing TVM's ONNX converters"))


def _frontend_ops_here() -> list[str]:
    require_compiler()
    from tvm.relax.frontend.onnx import onnx_frontend

    return sorted(onnx_frontend._get_convert_map())


def _onnx_specs(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from onnx import helper

    init = {t.name for t in model.graph.initializer}

    def spec(vi) -> TensorSpec:
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        return TensorSpec(vi.name, shape, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)))

    ins = [spec(v) for v in model.graph.input if v.name not in init]
    outs = [spec(v) for v in model.graph.output]
    return ins, outs


def tune_cache_dir(model_bytes: bytes, target: dict, trials: int) -> Path:
    """Where tuning logs for this (model, target, trial budget) live: ``~/.cache/edgekit/tune/<sha>``."""
    from edgekit._fs import cache_root

    root = cache_root() / "tune"
    key = hashlib.sha256(model_bytes + json.dumps(target, sort_keys=True).encode() + str(trials).encode())
    return root / key.hexdigest()[:24]


def _to_relax(model, shapes: dict):
    from tvm.relax.frontend.onnx import from_onnx

    missing = tvm_unsupported_ops(model)
    if missing:
        raise UnsupportedOpError(
            f"TVM cannot compile op(s) {', '.join(missing)}: its Relax ONNX frontend has no converter for them "
            "(keep them on a runtime that has them, or replace them in the model)")
    try:
        return from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"TVM could not import the model: {msg}") from None


def _tune(mod, target, model_bytes: bytes, trials: int, log=None):
    """Tune with MetaSchedule (in the compiler child: a crash there is an error in the caller), or reuse cached
    logs; return the module with the best schedules applied."""
    import tvm
    from tvm import relax

    work = tune_cache_dir(model_bytes, target, trials)
    done = work / "done"
    if done.is_file():
        if log:
            log(f"reusing tuning logs in {work}")
    else:
        work.mkdir(parents=True, exist_ok=True)
        if log:
            log(f"tuning {trials} trials (MetaSchedule; slow on few cores), logs in {work}")
        relax.pipeline.static_shape_tuning_pipeline(
            total_trials=trials, target=tvm.target.Target(target), work_dir=str(work),
            max_trials_per_task=max(8, trials // 4))(mod)
        done.write_text(json.dumps({"trials": trials, "target": target}))
    with tvm.target.Target(target):
        return relax.pipeline.static_shape_tuning_pipeline(total_trials=0, target=tvm.target.Target(target),
                                                           work_dir=str(work))(mod)


def _cpu_rules():
    """dlight rules for CPU: all-injective functions (inline producers, fuse, vectorize, parallelize) and
    conv-like functions (reduction loops around a vectorized spatial tile)."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
    from tvm.target.codegen import llvm_get_vector_width

    class Rule(CPUScheduleRule):
        """Schedules ``func`` with :meth:`schedule`; None (TVM's defaults) on other targets or shapes it cannot do."""

        def apply(self, func, target, _tunable):
            if not self.is_target_available(target):
                return None
            try:
                sch = s_tir.Schedule(func)
                return self.schedule(sch, normalize_prim_func(sch) or [], target)
            except Exception:  # noqa: BLE001 - a shape this rule cannot handle: leave it to the defaults
                return None

        def schedule(self, sch, infos, target):
            raise NotImplementedError

    class Elementwise(Rule):
        """All-injective functions: producers inlined, loops fused, vectorized, parallel when large."""

        def schedule(self, sch, infos, target):
            if not infos or not all(bi.is_injective() for bi in infos):
                return None
            for bi in infos[:-1]:
                sch.compute_inline(bi.block_rv)
            last = infos[-1].block_rv
            loops = sch.get_loops(last)
            if not loops:
                return None
            fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            extent = sch.get(fused).extent
            if not hasattr(extent, "value"):
                return None
            bits = sch.get(last).writes[0].buffer.dtype.bits if sch.get(last).writes else 32
            lanes = max((llvm_get_vector_width(target) or 128) // max(bits, 8), 2)
            if extent.value >= 4 * lanes:
                outer, inner = sch.split(fused, factors=[None, lanes])
                sch.vectorize(inner)
                if extent.value >= 1 << 14:
                    sch.parallel(outer)
            return sch

    class SpatialReduce(Rule):
        """Conv-like blocks (S..S R..R, several reduction axes): reductions outside a vectorized spatial tile."""

        def schedule(self, sch, infos, target):
            reds = [bi for bi in infos if not bi.is_injective()]
            if len(reds) != 1:
                return None
            dk = reds[0].dom_kind()
            n_s = len(dk) - len(dk.lstrip("S"))
            if n_s < 2 or dk[n_s:].strip("R") or len(dk) - n_s < 2:
                return None
            block = reds[0].block_rv
            lanes = max((llvm_get_vector_width(target) or 128) // 32, 2)
            loops = sch.get_loops(block)
            spatial, reduce_ = loops[:n_s], loops[n_s:]
            if not hasattr(sch.get(spatial[-1]).extent, "value") or sch.get(spatial[-1]).extent.value < lanes:
                return None
            outer, inner = sch.split(spatial[-1], factors=[None, lanes])
            sch.reorder(*spatial[:-1], outer, *reduce_, inner)
            sch.parallel(sch.fuse(*spatial[:-2]) if n_s > 3 else spatial[0])
            sch.decompose_reduction(block, reduce_[0])
            sch.unroll(inner)  # TVM refuses to vectorize under reduction loops; LLVM's SLP vectorizer takes it
            for bi in infos:
                if bi.is_injective():
                    bl = sch.get_loops(bi.block_rv)
                    ext = sch.get(bl[-1]).extent
                    if hasattr(ext, "value") and ext.value >= lanes:
                        _, vi = sch.split(bl[-1], factors=[None, lanes])
                        sch.vectorize(vi)
            return sch

    return Elementwise(), SpatialReduce()


def cpu_pipeline(target):
    """The default Relax CPU pipeline plus schedules (vectorized, parallel) and vectorizable fast math.

    Untuned TIR from the default pipeline is scalar; this keeps kernels competitive without tuning.
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight as dl

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(
                [relax.transform.FastMathTransform()]
                + cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
                + [dl.ApplyDefaultSchedule(*_cpu_rules(), dl.cpu.GEMV(), dl.cpu.Reduction())]
                + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
            return seq(mod)

    return _pipeline


#: appended to crash messages of tuned compiles
TUNE_HINT = ("; TVM 0.27 is known to crash in tvm::ffi::ToJSONGraph during MetaSchedule tuning on some machines: "
             "compile without --tune-trials (the untuned CPU schedules are used)")


def compile_onnx(model: Any, out_path: str | Path, target: Any = "llvm", shape_dict: dict | None = None,
                 cc: str | None = None, *, tune_trials: int = 0, board: str | None = None, log=None,
                 what: str | None = None) -> Path:
    """Compile ``model`` (path or ModelProto) for ``target``; writes ``OUT.so`` (Apple: ``.dylib``/``.tar``, see
    :func:`library_path`) and ``OUT.json``.

    Dynamic input dims are fixed through ``shape_dict`` ({input: shape}); default 1. ``cc`` links for
    another architecture (e.g. ``aarch64-linux-gnu-g++``). ``tune_trials`` > 0 tunes with MetaSchedule
    (only meaningful for the host: trials are measured on this machine). TVM runs in a child process
    (``tvm_child``): a crash or hang there is a ConversionError naming ``what`` ("compiling segment 3 (ops: Erf)
    for rpi4"; default: the model and board), the target and the signal. Returns the library path.
    """
    import onnx

    require_tvm_installed()
    check_cross_compiler(cc, board or "")
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    tdict = target if isinstance(target, dict) else {"kind": str(target)}
    if what is None:
        name = "the model" if isinstance(model, onnx.ModelProto) else Path(model).name
        what = f"compiling {name} for {board or tdict.get('mtriple') or tdict.get('kind')}"
    lib = tvm_child.call(_compile_here, src, str(out_path), target, shape_dict, cc, tune_trials, board,
                         what=what, log=log, hint=TUNE_HINT if tune_trials > 0 else "")
    return Path(lib)


def _compile_here(src: bytes | str, out_path: str, target: Any, shape_dict: dict | None, cc: str | None,
                  tune_trials: int, board: str | None, log=None) -> str:
    """The compile itself (in the compiler child): ONNX -> Relax -> library + signature; returns the library."""
    import onnx

    tvm = require_compiler()
    model = onnx.load_from_string(src) if isinstance(src, bytes) else onnx.load(src)
    ins, outs = _onnx_specs(model)
    shapes = {s.name: list((shape_dict or {}).get(s.name, s.concrete_shape())) for s in ins}
    mod = _to_relax(model, shapes)
    tdict = target if isinstance(target, dict) else {"kind": str(target)}
    apple = "apple" in str(tdict.get("mtriple", "")) or tdict.get("kind") == "metal"
    if tune_trials > 0 and tdict.get("kind") == "llvm" and "num-cores" not in tdict:
        target = tdict = {**tdict, "num-cores": os.cpu_count() or 1}  # MetaSchedule needs the core count
    tvm_child.crash_hook_for_tests()
    try:
        if tune_trials > 0:
            mod = _tune(mod, tdict, model.SerializeToString(), tune_trials, log)
        tgt = tvm.target.Target(target)
        if tune_trials > 0 or tgt.kind.name != "llvm":
            ex = tvm.compile(mod, target=tgt)
        else:
            ex = tvm.compile(mod, target=tgt, relax_pipeline=cpu_pipeline(tgt))
    except Exception as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"TVM could not compile the model for {tdict}: {msg}") from None
    out = _export(ex, library_path(out_path, apple), None if apple else cc)
    _write_signature(out, model, ins, outs, shapes, board=board, target=tdict, tune_trials=tune_trials,
                     device="metal" if tdict.get("kind") == "metal" else "cpu")
    return str(out)


def _export(ex, out: Path, cc: str | None) -> Path:
    """Link ``ex`` to ``out`` atomically (Apple code is shipped as objects: load_module links them on the Mac)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    try:
        ex.export_library(str(tmp), **({"cc": cc} if cc else {}))
        tmp.replace(out)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"linking the TVM library {out.name} failed: {msg}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _write_signature(out: Path, model, ins, outs, shapes: dict, **fields) -> None:
    """``OUT.json``: the library's name, entry, target and fixed input specs (what runtimes/tvm.py reads)."""
    fixed_ins = [TensorSpec(s.name, tuple(shapes[s.name]), s.dtype) for s in ins]
    params = sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer)
    meta = {
        "format": SIGNATURE_FORMAT, "version": 1, "library": out.name, "entry": "main",
        "board": fields["board"], "device": fields["device"], "target": fields["target"],
        "tuned_trials": int(fields["tune_trials"]),
        "inputs": [s.to_json() for s in fixed_ins],
        "outputs": [s.to_json() for s in outs],
        "source_ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "parameters": params,
    }
    side = out.with_suffix(".json")
    tmp_side = side.with_name(f".{side.name}.tmp-{os.getpid()}")
    tmp_side.write_text(json.dumps(meta, indent=2))
    tmp_side.replace(side)


#: Apple GPU limits for TVM's Metal target (M1 family)
METAL_LIMITS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 32768, "thread_warp_size": 32}
DEVICES = ("cpu", "metal")


def compile_for_board(model: Any, out_stem: str | Path, board: str, shape_dict: dict | None = None,
                      tune_trials: int = 0, log=None, device: str = "cpu", what: str | None = None) -> Path:
    """Compile ``model`` for a board profile (or ``"host"``): ``OUT_STEM.so``/``.dylib``/``.tar`` + ``.json``.

    ``device="metal"`` (Apple boards) emits Metal kernels with an arm64-macOS host part (a ``.tar``).
    """
    bt = board_target(board)
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    target = bt.target
    if device == "metal":
        if not bt.is_apple:
            raise InputError(f"device 'metal' needs an Apple board (e.g. apple-m1), not {bt.board!r}")
        if tune_trials:
            raise InputError("tuning Metal kernels needs the Mac itself; compile untuned (--tune-trials 0)")
        target = {"kind": "metal", **METAL_LIMITS, "host": dict(bt.target)}
    if bt.cc and not bt.is_apple:
        check_cross_compiler(bt.cc, bt.board)
    return compile_onnx(model, out_stem, target, shape_dict, None if bt.is_apple else bt.cc,
                        tune_trials=tune_trials, board=bt.board, log=log, what=what)


# ------------------------------------------------------------------------------------------------------------
# Binary checks (what a library was built for, from its first bytes)

_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "arm", 0xF3: "riscv", 0x03: "x86"}
_MACHO_CPUS = {0x0100000C: "arm64", 0x01000007: "x86_64"}


def binary_arch(path: str | Path) -> tuple[str, str]:
    """(container, arch) of a library/object: ("elf", "aarch64"), ("mach-o", "arm64"), ("tar", "arm64") ..."""
    import tarfile

    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(20)
    if head[:4] == b"\x7fELF":
        little = head[5] == 1
        machine = int.from_bytes(head[18:20], "little" if little else "big")
        return "elf", _ELF_MACHINES.get(machine, hex(machine))
    if head[:4] == b"\xcf\xfa\xed\xfe":
        return "mach-o", _MACHO_CPUS.get(int.from_bytes(head[4:8], "little"), head[4:8].hex())
    if tarfile.is_tarfile(p):
        arches = set()
        with tarfile.open(p) as tf:
            for m in tf.getmembers():
                if m.isfile() and m.name.endswith(".o"):
                    data = tf.extractfile(m).read(8)
                    if data[:4] == b"\xcf\xfa\xed\xfe":
                        arches.add("mach-o/" + _MACHO_CPUS.get(int.from_bytes(data[4:8], "little"), "?"))
                    elif data[:4] == b"\x7fELF":
                        arches.add("elf")
        return "tar", ",".join(sorted(arches)) or "empty"
    return "unknown", "unknown"
