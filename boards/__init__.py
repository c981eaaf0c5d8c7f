"""edgekit.boards: board profiles (data files in ``profiles/``), and detection of the board this runs on.

A profile says what a board is (CPU, ISA features, cores, memory), how to compile for it (TVM target, cross
compiler), what runs well on it (runtimes, delegates) and the peak compute and bandwidth figures a latency
planner uses, each with its source. Only the standard library is imported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgekit.errors import BoardError

__all__ = ["BoardProfile", "get_profile", "profiles", "names", "detect", "host_profile", "PROFILE_DIR"]

#: folder of the shipped ``<name>.json`` profiles
PROFILE_DIR = Path(__file__).with_name("profiles")

#: where the board's model string lives on Linux device-tree systems (first readable one wins)
DT_MODEL_PATHS = ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model")
CPUINFO_PATH = "/proc/cpuinfo"

_REQUIRED = {
    "name": str, "title": str, "arch": str, "cpu": str, "cores": int, "memory_gb": (int, float),
    "isa_features": list, "tvm_target": dict, "preferred_runtimes": list, "delegates": list,
    "peak_gflops_fp32": (int, float), "peak_gops_int8": (int, float), "mem_bandwidth_gbs": (int, float),
    "sources": dict,
}


@dataclass(frozen=True)
class BoardProfile:
    """One board: hardware facts, compile targets, preferred runtimes and planner figures (with sources)."""

    name: str
    title: str
    arch: str
    cpu: str
    cores: int
    memory_gb: float
    isa_features: tuple[str, ...]
    tvm_target: Mapping[str, Any]
    cross_compiler: str | None
    preferred_runtimes: tuple[str, ...]
    delegates: tuple[str, ...]
    peak_gflops_fp32: float
    peak_gops_int8: float
    mem_bandwidth_gbs: float
    sources: Mapping[str, str]
    clock_ghz: float | None = None
    accelerators: tuple[Mapping[str, Any], ...] = ()
    match: Mapping[str, Sequence[str]] = field(default_factory=dict)
    notes: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "<dict>") -> BoardProfile:
        """Validate a profile mapping (types of the required fields, no unknown keys) and build it."""
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise BoardError(f"board profile {origin}: missing field(s) {', '.join(missing)}")
        for key, typ in _REQUIRED.items():
            if not isinstance(data[key], typ) or isinstance(data[key], bool):
                raise BoardError(f"board profile {origin}: field {key!r} expected {_tname(typ)}, "
                                 f"got {type(data[key]).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BoardError(f"board profile {origin}: unknown field(s) {', '.join(unknown)}")
        if "kind" not in data["tvm_target"]:
            raise BoardError(f"board profile {origin}: tvm_target needs a 'kind' (e.g. 'llvm')")
        if data["cores"] < 1 or min(data["peak_gflops_fp32"], data["peak_gops_int8"], data["mem_bandwidth_gbs"]) <= 0:
            raise BoardError(f"board profile {origin}: cores and peak/bandwidth figures must be positive")
        for key in ("peak_gflops_fp32", "peak_gops_int8", "mem_bandwidth_gbs"):
            if key not in data["sources"]:
                raise BoardError(f"board profile {origin}: sources has no entry for {key!r}")
        cc = data.get("cross_compiler")
        if cc is not None and not isinstance(cc, str):
            raise BoardError(f"board profile {origin}: cross_compiler expected a string or null, got {cc!r}")
        kw = dict(data)
        for key in ("isa_features", "preferred_runtimes", "delegates", "accelerators"):
            if key in kw:
                kw[key] = tuple(kw[key])
        kw["memory_gb"] = float(kw["memory_gb"])
        for key in ("peak_gflops_fp32", "peak_gops_int8", "mem_bandwidth_gbs"):
            kw[key] = float(kw[key])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, not tuples) with the same fields as the profile file."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["tvm_target"] = dict(self.tvm_target)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """The profile as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def has(self, feature: str) -> bool:
        """Whether the CPU has ISA feature ``feature`` (e.g. ``"dotprod"``, ``"avx512_vnni"``)."""
        return feature in self.isa_features


def _tname(typ) -> str:
    return " or ".join(t.__name__ for t in typ) if isinstance(typ, tuple) else typ.__name__


@lru_cache(maxsize=1)
def _load_all() -> dict[str, BoardProfile]:
    out: dict[str, BoardProfile] = {}
    for path in sorted(PROFILE_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BoardError(f"board profile {path}: cannot read JSON ({exc})") from None
        prof = BoardProfile.from_dict(data, origin=str(path))
        if prof.name != path.stem:
            raise BoardError(f"board profile {path}: name {prof.name!r} differs from the file name {path.stem!r}")
        out[prof.name] = prof
    return out


#: other names people use for a board
ALIASES = {
    "raspberrypi4": "rpi4", "pi4": "rpi4", "raspberry-pi-4": "rpi4",
    "raspberrypi5": "rpi5", "pi5": "rpi5", "raspberry-pi-5": "rpi5",
    "orin-nano": "jetson-orin-nano", "jetson": "jetson-orin-nano",
    "apple-m-series": "apple-m1", "apple": "apple-m1", "m1": "apple-m1", "mac": "apple-m1",
    "aarch64": "generic-aarch64", "arm64": "generic-aarch64",
    "x86_64": "x86-64", "amd64": "x86-64", "host": "x86-64", "avx2": "x86-64",
    "avx512": "x86-64-avx512-vnni", "vnni": "x86-64-avx512-vnni",
}


def names() -> list[str]:
    """Names of the known board profiles."""
    return list(_load_all())


def profiles() -> list[BoardProfile]:
    """Every known board profile, sorted by name."""
    return list(_load_all().values())


def get_profile(name: str) -> BoardProfile:
    """The profile called ``name`` (or an alias); an unknown name raises :class:`BoardError` listing the known ones."""
    table = _load_all()
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in table:
        return table[key]
    raise BoardError(f"unknown board {name!r}; known boards: {', '.join(table)}")


def _read(path: str | os.PathLike | None) -> str:
    if path is None:
        return ""
    try:
        return Path(path).read_bytes().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return ""


def _cpuinfo_fields(text: str) -> tuple[set[str], set[str]]:
    """(CPU part numbers like '0xd08', ISA flags) from /proc/cpuinfo text (Arm 'Features' or x86 'flags')."""
    parts, flags = set(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "cpu part":
            parts.add(value.strip().lower())
        elif key in ("flags", "features"):
            flags.update(value.split())
    return parts, flags


def detect(
    dt_model_paths: Sequence[str | os.PathLike] | None = None,
    cpuinfo_path: str | os.PathLike | None = CPUINFO_PATH,
    machine: str | None = None,
    system: str | None = None,
) -> BoardProfile:
    """The profile of the machine this runs on.

    Order: the device-tree model string (Raspberry Pi, Jetson), then the CPU part number in cpuinfo, then the
    machine type and ISA flags (Apple, x86-64 with AVX-512 VNNI or AVX2), then ``generic-aarch64`` or ``x86-64``.
    The paths, machine and system are parameters so tests can inject fake files.
    """
    table = _load_all()
    model = next((m for m in (_read(p) for p in (dt_model_paths if dt_model_paths is not None else DT_MODEL_PATHS))
                  if m), "")
    parts, flags = _cpuinfo_fields(_read(cpuinfo_path))
    machine = (machine if machine is not None else platform.machine()).lower()
    system = system if system is not None else platform.system()
    if model:
        for prof in table.values():
            if any(pat.lower() in model.lower() for pat in prof.match.get("dt_model", ())):
                return prof
    for prof in table.values():
        if parts & {p.lower() for p in prof.match.get("cpu_part", ())}:
            return prof
    if system == "Darwin" and machine in ("arm64", "aarch64"):
        return table["apple-m1"]
    if machine in ("x86_64", "amd64"):
        if {"avx512f", "avx512_vnni"} <= flags:
            return table["x86-64-avx512-vnni"]
        return table["x86-64"]
    return table["generic-aarch64"]


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def host_profile() -> BoardProfile:
    """:func:`detect`'s profile with ``cores`` and ``memory_gb`` replaced by this machine's real figures.

    Peak figures are scaled by the core-count ratio (same per-core rate as the profile).
    """
    prof = detect()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or prof.cores)
    mem = _memory_gb() or prof.memory_gb
    scale = cores / prof.cores
    sources = dict(prof.sources)
    sources["cores"] = "measured on this machine (CPUs this process may use)"
    sources["host_scaling"] = f"peak figures scaled by {cores}/{prof.cores} cores from the {prof.name} profile"
    return dataclasses.replace(prof, cores=cores, memory_gb=mem, peak_gflops_fp32=prof.peak_gflops_fp32 * scale,
                               peak_gops_int8=prof.peak_gops_int8 * scale, sources=sources)

