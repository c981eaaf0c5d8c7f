"""``edgekit doctor``: what works here (runtimes, delegates, extras, camera, cross compilers), the detected
board, and what to install for what is missing."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
import sys

from edgekit import __version__, boards
from edgekit._extras import install_hint
from edgekit.loader import backends

from ._common import print_json, table

#: optional Python modules edgekit uses: (module, extra or pip name, what for)
OPTIONAL = (
    ("ai_edge_litert", "edgekit-sdk[tflite]", "run .tflite models (LiteRT)"),
    ("tvm", "edgekit-sdk[tvm]", "compile and run TVM kernels"),
    ("coremltools", "edgekit-sdk[coreml]", "build Core ML packages (prediction needs macOS)"),
    ("torch", "edgekit-sdk[torch]", "convert PyTorch models"),
    ("onnxslim", "edgekit-sdk[convert]", "slim ONNX graphs before export"),
    ("tokenizers", "edgekit-sdk[apps]", "text apps (tokenizer)"),
    ("sklearn", "edgekit-sdk[apps]", "app metrics"),
    ("matplotlib", "edgekit-sdk[plot]", "plots in reports"),
    ("picamera2", "picamera2 (apt install python3-picamera2 on Raspberry Pi OS)", "Pi app: Raspberry Pi camera"),
    ("cv2", "opencv-python-headless", "Pi app: USB camera through OpenCV"),
)


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check which runtimes, delegates and extras work here, and the board")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--deep", action="store_true",
                   help="also import every installed optional module (in a subprocess) to catch broken installs")
    p.set_defaults(func=run)


def check_import(module: str, timeout: float = 300) -> str | None:
    """Import ``module`` in a fresh interpreter: None when it works, else the error's last line."""
    try:
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"import {module} took more than {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    return lines[-1] if lines else f"import {module} exited with status {proc.returncode}"


def _hint(pkg: str) -> str:
    return f"pip install '{pkg}'" if pkg.startswith("edgekit-sdk[") or " " not in pkg else pkg


def delegates(available: set[str]) -> list[dict]:
    """Hardware/accelerated execution paths: onnxruntime execution providers, XNNPACK, Core ML."""
    rows = []
    if "onnxruntime" in available:
        import onnxruntime as ort

        for prov in ort.get_available_providers():
            rows.append({"delegate": prov, "runtime": "onnxruntime", "usable": True, "note": ""})
    if "litert" in available:
        rows.append({"delegate": "xnnpack", "runtime": "litert", "usable": True,
                     "note": "LiteRT's default CPU delegate"})
    mac = platform.system() == "Darwin"
    note = "" if "coreml" in available else ("pip install 'edgekit-sdk[coreml]'" if mac else "needs macOS")
    rows.append({"delegate": "coreml (CPU/GPU/Neural Engine)", "runtime": "coreml", "usable": "coreml" in available,
                 "note": note})
    return rows


def apt_package(compiler: str) -> str:
    """The Debian/Ubuntu package of a cross compiler: ``aarch64-linux-gnu-g++`` -> ``g++-aarch64-linux-gnu``."""
    for tool in ("g++", "gcc"):
        if compiler.endswith(f"-{tool}"):
            return f"{tool}-{compiler[: -len(tool) - 1]}"
    return compiler


def cross_compilers() -> list[dict]:
    """Each cross compiler a board profile needs (``--board``): found on PATH or the command installing it."""
    needed: dict[str, list[str]] = {}
    for prof in boards.profiles():
        if prof.cross_compiler:
            needed.setdefault(prof.cross_compiler, []).append(prof.name)
    rows = []
    for cc, names in needed.items():
        found = shutil.which(cc)
        rows.append({"compiler": cc, "boards": names, "found": found is not None, "path": found,
                     "install": None if found else f"apt-get install {apt_package(cc)}"})
    return rows


def diagnose(deep: bool = False) -> dict:
    """Everything ``doctor`` reports, as a dict; ``deep`` imports each installed optional module."""
    rows = backends()
    usable = {r["name"] for r in rows if r["available"]}
    board = boards.host_profile()
    mods = []
    for mod, pkg, purpose in OPTIONAL:
        present = importlib.util.find_spec(mod) is not None
        row = {"module": mod, "installed": present, "for": purpose, "install": None if present else _hint(pkg)}
        if deep and present:
            row["import_error"] = check_import(mod)
        mods.append(row)
    compilers = cross_compilers()
    todo = []
    for r in rows:
        reason = r["reason"] or ""
        if not r["available"] and "install" in reason.lower():  # not e.g. "needs macOS": nothing to install
            fix = install_hint(r["extra"]) if r["extra"] and "not installed" in reason else reason
            todo.append(f"backend {r['name']}: {fix}")
    for rt in board.preferred_runtimes:
        if rt not in usable and rt in {r["name"] for r in rows}:
            todo.append(f"board {board.name} prefers runtime {rt}, which is not usable here")
    todo += [f"{m['module']} ({m['for']}): {m['install']}" for m in mods if not m["installed"]]
    todo += [f"{m['module']} is installed but does not import: {m['import_error']} (reinstall: "
             f"{_hint(pkg)})" for m, (_, pkg, _) in zip(mods, OPTIONAL) if m.get("import_error")]
    todo += [f"{c['compiler']} (edgekit compile/convert --board {','.join(c['boards'])}): {c['install']}"
             for c in compilers if not c["found"]]
    return {
        "edgekit": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "machine": platform.machine(),
        "board": {"name": board.name, "title": board.title, "cores": board.cores, "memory_gb": board.memory_gb},
        "backends": rows, "delegates": delegates(usable), "modules": mods, "cross_compilers": compilers,
        "missing": todo, "ok": bool(usable),
    }


def run(args) -> int:
    rep = diagnose(deep=args.deep)
    if args.json:
        print_json(rep)
        return 0 if rep["ok"] else 1
    b = rep["board"]
    print(f"edgekit {rep['edgekit']}, Python {rep['python']}, {rep['platform']}")
    print(f"board: {b['name']} ({b['title']}), {b['cores']} cores, {b['memory_gb']} GB\n")
    print(table([{"backend": r["name"], "usable": r["available"], "version": r["version"],
                  "note": r["reason"] or ""} for r in rep["backends"]]))
    print()
    print(table(rep["delegates"]))
    print()
    print(table([{"module": m["module"], "installed": m["installed"], "for": m["for"]}
                 | ({"imports": m["installed"] and not m.get("import_error")} if args.deep else {})
                 for m in rep["modules"]]))
    print()
    print(table([{"cross compiler": c["compiler"], "found": c["found"], "for --board": ", ".join(c["boards"]),
                  "install": c["install"] or ""} for c in rep["cross_compilers"]]))
    print()
    if rep["missing"]:
        print("to install or fix:")
        for line in rep["missing"]:
            print(f"  - {line}")
    else:
        print("nothing missing")
    if not rep["ok"]:
        print("no runtime is usable: pip install edgekit (onnxruntime) first", file=sys.stderr)
        return 1
    return 0
