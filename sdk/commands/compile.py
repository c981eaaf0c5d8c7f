"""``edgekit compile MODEL --board BOARD -o OUT``: the whole model compiled by TVM for a board (optionally tuned)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from edgekit.errors import InputError

from ._common import print_json


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile a whole ONNX model with TVM for a board (host, rpi4, ...)")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--board", default="host", help="board profile name, or 'host' (default)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output stem: writes OUT.so (Apple boards: OUT.dylib on macOS, else OUT.tar of objects) "
                        "and OUT.json")
    p.add_argument("--device", default="cpu", choices=("cpu", "metal"),
                   help="cpu (default) or metal (Apple boards: Metal kernels + arm64 macOS host code)")
    p.add_argument("--tune-trials", type=int, default=0, metavar="N",
                   help="MetaSchedule trial budget (host only; logs cached under ~/.cache/edgekit/tune)")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="fix a dynamic input's shape (default: dynamic dims = 1)")
    p.add_argument("--force", action="store_true", help="overwrite existing output")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _shapes(items) -> dict:
    shapes = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.split(",") if d.strip()]
        except ValueError:
            raise InputError(f"--input-shape expects NAME=D0,D1,..., got {item!r}") from None
    return shapes


def tunable_here(board: str) -> bool:
    """Tuning measures candidates on this machine: only the host (or a board of the same arch, no cross cc)."""
    if board == "host":
        return True
    from edgekit.boards import get_profile

    prof = get_profile(board)
    return prof.cross_compiler is None and prof.arch == platform.machine()


def output_paths(output: str | Path, bt, system: str | None = None) -> tuple[Path, Path]:
    """(library, signature) that compiling for the BoardTarget ``bt`` to ``output`` writes on ``system``
    (``sys.platform`` values; default this one): ``.so``, or for Apple boards ``.dylib`` on macOS and ``.tar``
    elsewhere; the ``.json`` signature beside it."""
    from edgekit.converters.tvm_compile import library_path

    lib = library_path(output, bt.is_apple, system)
    return lib, lib.with_suffix(".json")


def compile_model(model: str | Path, output: str | Path, board: str = "host", tune_trials: int = 0,
                  input_shapes: dict | None = None, force: bool = False, device: str = "cpu") -> Path:
    """Compile ``model`` for ``board``; returns the library path (the API behind ``edgekit compile``)."""
    from edgekit._fs import check_writable
    from edgekit.converters.tvm_compile import board_target, compile_for_board

    src = Path(model)
    if not src.is_file() or src.suffix.lower() != ".onnx":
        raise InputError(f"{src}: expected an existing .onnx file")
    if tune_trials < 0:
        raise InputError(f"--tune-trials must be >= 0, got {tune_trials}")
    bt = board_target(board)  # unknown board -> BoardError listing the known ones
    if tune_trials and not tunable_here(board):
        raise InputError(f"cannot tune for board {board!r} here: MetaSchedule measures candidates on the machine "
                         f"it runs on ({platform.machine()}); compile untuned (--tune-trials 0) or tune with "
                         "--board host, or run edgekit compile on the board itself")
    lib, signature = output_paths(output, bt)
    for p in (lib, signature):
        check_writable(p, force)

    def log(msg: str) -> None:
        sys.stderr.write(f"edgekit compile: {msg}\n")

    tuning = f", {tune_trials} tuning trials" if tune_trials else ""
    log(f"compiling {src.name} for {bt.board} ({bt.target}){tuning}")
    return compile_for_board(src, lib, board, input_shapes, tune_trials=tune_trials, log=log, device=device)


def run(args) -> int:
    from edgekit.converters.tvm_compile import binary_arch

    lib = compile_model(args.model, args.output, args.board, args.tune_trials, _shapes(args.input_shape), args.force,
                        args.device)
    container, arch = binary_arch(lib)
    report = {"model": args.model, "board": args.board, "device": args.device, "library": str(lib),
              "signature": str(lib.with_suffix(".json")), "binary": container, "arch": arch,
              "tune_trials": args.tune_trials}
    if args.json:
        print_json(report)
    else:
        print(f"wrote {lib} ({container} {arch}) and {lib.with_suffix('.json').name}")
    return 0
