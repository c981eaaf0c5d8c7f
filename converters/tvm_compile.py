"""Compile an ONNX model (or subgraph) with TVM Relax into a library plus its JSON signature, per board.

``compile_onnx`` writes ``OUT.so`` (Apple targets: ``OUT.dylib`` when linked on macOS, else ``OUT.tar`` of Mach-O
objects that ``tvm.runtime.load_module`` links on the Mac; see :func:`library_path`) and ``OUT.json`` (the
signature ``runtimes/tvm.py`` reads).
Boards come from ``edgekit.boards`` profiles (``tvm_target``, ``cross_compiler``); ``"host"`` is this CPU.
Untuned CPU builds use :func:`cpu_pipeline` (vectorizable fast math plus simple schedules for elementwise
and conv-like functions); Apple boards can also get Metal kernels (``device="metal"``). Optional MetaSchedule
tuning runs in a child process and caches its logs under ``~/.cache/edgekit/tune/<key>/``.
"""

from __future__ import annotations

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
from edgekit.errors import BoardError, ConversionError, InputError, UnsupportedOpError
from edgekit.specs import TensorSpec

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


def host_target() -> dict:
    """The TVM target of this CPU (LLVM's name for it, so vector units are used)."""
    import tvm  # noqa: F401 - loads the compiler, needed for the codegen query
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())}


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
    require("tvm", purpose="compiling TVM kernels")
    from tvm.relax.frontend.onnx import onnx_frontend

    known = onnx_frontend._get_convert_map()
    return sorted({n.op_type for n in model.graph.node if n.op_type not in known})


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


def _tune_child(model_path: str, shapes: dict, target: dict, work: str, trials: int) -> None:
    """Child process: run MetaSchedule for the model, leaving its database in ``work``."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(model_path), shape_dict=shapes, keep_params_in_input=False)
    relax.pipeline.static_shape_tuning_pipeline(
        total_trials=trials, target=tvm.target.Target(target), work_dir=work,
        max_trials_per_task=max(8, trials // 4))(mod)


def _tune(mod, target, model_bytes: bytes, shapes: dict, trials: int, log=None):
    """Tune with MetaSchedule in a child process (a crash there is an error here, not a dead process), or
    reuse cached logs; return the module with the best schedules applied."""
    import multiprocessing as mp
    import tempfile

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
        with tempfile.TemporaryDirectory(prefix="edgekit-tune-") as tmp:
            model_path = Path(tmp) / "model.onnx"
            model_path.write_bytes(model_bytes)
            proc = mp.get_context("spawn").Process(target=_tune_child,
                                                   args=(str(model_path), shapes, target, str(work), trials))
            proc.start()
            proc.join()
        if proc.exitcode != 0:
            raise ConversionError(
                f"MetaSchedule tuning failed (child exit status {proc.exitcode}; TVM 0.27 is known to crash in "
                f"tvm::ffi::ToJSONGraph during tuning on some machines); logs in {work / 'logs'}. "
                "Compile without --tune-trials (the untuned CPU schedules are used)")
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


def compile_onnx(model: Any, out_path: str | Path, target: Any = "llvm", shape_dict: dict | None = None,
                 cc: str | None = None, *, tune_trials: int = 0, board: str | None = None, log=None) -> Path:
    """Compile ``model`` (path or ModelProto) for ``target``; writes ``OUT.so`` (Apple: ``.dylib``/``.tar``, see
    :func:`library_path`) and ``OUT.json``.

    Dynamic input dims are fixed through ``shape_dict`` ({input: shape}); default 1. ``cc`` links for
    another architecture (e.g. ``aarch64-linux-gnu-g++``). ``tune_trials`` > 0 tunes with MetaSchedule
    (only meaningful for the host: trials are measured on this machine). Returns the library path.
    """
    import onnx

    tvm = require("tvm", purpose="compiling TVM kernels")
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    check_cross_compiler(cc, board or "")
    ins, outs = _onnx_specs(model)
    shapes = {s.name: list((shape_dict or {}).get(s.name, s.concrete_shape())) for s in ins}
    mod = _to_relax(model, shapes)
    tdict = target if isinstance(target, dict) else {"kind": str(target)}
    apple = "apple" in str(tdict.get("mtriple", "")) or tdict.get("kind") == "metal"
    device = "metal" if tdict.get("kind") == "metal" else "cpu"
    if tune_trials > 0 and tdict.get("kind") == "llvm" and "num-cores" not in tdict:
        target = tdict = {**tdict, "num-cores": os.cpu_count() or 1}  # MetaSchedule needs the core count
    try:
        if tune_trials > 0:
            mod = _tune(mod, tdict, model.SerializeToString(), shapes, tune_trials, log)
        tgt = tvm.target.Target(target)
        if tune_trials > 0 or tgt.kind.name != "llvm":
            ex = tvm.compile(mod, target=tgt)
        else:
            ex = tvm.compile(mod, target=tgt, relax_pipeline=cpu_pipeline(tgt))
    except ConversionError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"TVM could not compile the model for {tdict}: {msg}") from None
    # Apple code cannot be linked on another OS: ship the objects (load_module links them on the Mac)
    out = library_path(out_path, apple)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    try:
        ex.export_library(str(tmp), **({"cc": cc} if cc and not apple else {}))
        tmp.replace(out)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"linking the TVM library {out.name} failed: {msg}") from None
    finally:
        tmp.unlink(missing_ok=True)
    fixed_ins = [TensorSpec(s.name, tuple(shapes[s.name]), s.dtype) for s in ins]
    params = sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer)
    meta = {
        "format": SIGNATURE_FORMAT,
        "version": 1,
        "library": out.name,
        "entry": "main",
        "board": board,
        "device": device,
        "target": tdict,
        "tuned_trials": int(tune_trials),
        "inputs": [s.to_json() for s in fixed_ins],
        "outputs": [s.to_json() for s in outs],
        "source_ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "parameters": params,
    }
    side = out.with_suffix(".json")
    tmp_side = side.with_name(f".{side.name}.tmp-{os.getpid()}")
    tmp_side.write_text(json.dumps(meta, indent=2))
    tmp_side.replace(side)
    return out


#: Apple GPU limits for TVM's Metal target (M1 family)
METAL_LIMITS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 32768, "thread_warp_size": 32}
DEVICES = ("cpu", "metal")


def compile_for_board(model: Any, out_stem: str | Path, board: str, shape_dict: dict | None = None,
                      tune_trials: int = 0, log=None, device: str = "cpu") -> Path:
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
                        tune_trials=tune_trials, board=bt.board, log=log)


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
