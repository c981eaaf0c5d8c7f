"""Composite backend: runs an ``edgekit-composite`` plan (runtime segments + TVM kernels) as one model.

Each runtime step opens its artifact with edgekit's own backend for that format (ONNX Runtime, LiteRT,
Core ML); each TVM step opens the library built for the chosen board through the TVM backend (runtime-only
TVM). Tensors pass between steps as the numpy arrays the backends return: no copies on the edgekit side,
and TVM steps view aligned arrays in place (DLPack) in both directions.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BackendUnavailable, InputError, ModelLoadError
from edgekit.specs import TensorSpec

from . import register
from .base import Backend, Runner, read_tagged_json

PLAN_FORMAT = "edgekit-composite"
PLAN_NAME = "plan.json"


def read_plan(path: Path) -> tuple[dict, Path]:
    """(plan dict, plan file) for a plan file or a folder holding ``plan.json``."""
    p = Path(path)
    plan_path = p / PLAN_NAME if p.is_dir() else p
    if not plan_path.is_file():
        raise ModelLoadError(f"{p}: no {PLAN_NAME} composite plan")
    plan = read_tagged_json(plan_path, PLAN_FORMAT, "an edgekit composite plan")
    if not plan.get("steps"):
        raise ModelLoadError(f"{plan_path}: the plan has no steps")
    try:
        ok = all(s["kind"] in ("runtime", "tvm") and "format" in s and "inputs" in s
                                         and "outputs" in s for s in plan["steps"])
        ok = ok and isinstance(plan["inputs"], list) and isinstance(plan["outputs"], list)
    except (KeyError, TypeError) as exc:
        raise ModelLoadError(f"{plan_path}: malformed plan ({exc!r})") from None
    if not ok:
        raise ModelLoadError(f"{plan_path}: malformed plan (steps need kind, format, inputs and outputs)")
    return plan, plan_path


#: other spellings of an architecture, as platform.machine() and target triples give them
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}


def _norm_arch(arch: str) -> str:
    arch = str(arch).strip().lower()
    return _ARCH_ALIASES.get(arch, arch)


def _board_platform(plan: dict, board: str) -> tuple[str, str] | None:
    """(architecture, system) a board's kernels are built for, from the plan's TVM target or its profile."""
    target = (plan.get("targets") or {}).get(board)
    if not isinstance(target, dict):
        try:
            from edgekit.boards import get_profile

            target = get_profile(board).tvm_target
        except Exception:  # noqa: BLE001 - an unknown board just cannot be matched
            return None
    triple = str(target.get("mtriple", "")).lower()
    if not triple:
        return None
    system = "Darwin" if ("apple" in triple or "darwin" in triple or "macos" in triple) else "Linux"
    return _norm_arch(triple.split("-")[0]), system


def _host_board(plan: dict, machine: str | None = None, system: str | None = None,
                detected: str | None = None) -> str:
    """The board whose kernels run here.

    1. ``"host"`` when built and built for this architecture and OS (plans record ``host.machine``; older plans
       without it are trusted); 2. the detected board (``edgekit.boards.detect()``) when the plan has it; 3. the
       first board whose TVM target has this machine's architecture and OS (device boards such as
       ``apple-m1:metal`` are chosen only by name). ``machine``/``system``/``detected`` are for tests.
    """
    boards = list(plan.get("boards", []))
    machine = _norm_arch(machine or platform.machine())
    system = system or platform.system()
    built = plan.get("host")
    if "host" in boards:
        if not isinstance(built, dict) or (_norm_arch(built.get("machine", machine)) == machine
                                           and built.get("system", system) == system):
            return "host"
    if detected is None:
        try:
            from edgekit.boards import detect

            found = detect()
            detected = getattr(found, "name", found)
        except Exception:  # noqa: BLE001 - detection is best effort
            detected = None
    if detected in boards:
        return detected
    for b in boards:
        if b != "host" and ":" not in b and _board_platform(plan, b) == (machine, system):
            return b
    built_for = {b: (f"{built.get('machine')}/{built.get('system')}" if b == "host" and isinstance(built, dict)
                     else "/".join(_board_platform(plan, b) or ("?",))) for b in boards}
    raise ModelLoadError(
        "the composite has TVM kernels for " + ", ".join(f"{b} ({p})" for b, p in built_for.items())
        + f", none for this machine ({machine}/{system}, detected board {detected or 'unknown'}); "
        "open it with board=NAME or rebuild it with --board host (or this board's name)")


class _Step:
    def __init__(self, name: str, runner: Runner, in_names: list[str], out_names: list[str]):
        self.name = name
        self.runner = runner
        # plan tensor name -> the artifact's own name (converters may rename tensors: bind by position then)
        rin = [s.name for s in runner.inputs]
        rout = [s.name for s in runner.outputs]
        if len(rin) != len(in_names) or len(rout) != len(out_names):
            raise ModelLoadError(f"composite step {name}: artifact has {len(rin)} inputs / {len(rout)} outputs, "
                                 f"the plan says {len(in_names)} / {len(out_names)}")
        self.in_map = {n: n for n in in_names} if set(rin) == set(in_names) else dict(zip(in_names, rin))
        self.out_map = {n: n for n in out_names} if set(rout) == set(out_names) else dict(zip(rout, out_names))

    def run(self, env: dict[str, np.ndarray]) -> None:
        feeds = {inner: env[outer] for outer, inner in self.in_map.items()}
        res = self.runner.run(feeds, None)
        for inner, outer in self.out_map.items():
            env[outer] = res[inner]


class _EvalRunner(Runner):
    """A runtime step evaluated by a converter's graph check (e.g. Core ML's MIL evaluator on Linux)."""

    backend = "graph-check"

    def __init__(self, evaluate, path: Path, step: dict):
        self._evaluate = evaluate
        self._path = path
        self.inputs = [TensorSpec.from_json(s) for s in step["inputs"]]
        self.outputs = [TensorSpec.from_json(s) for s in step["outputs"]]

    def run(self, feeds, output_names):
        got = list(self._evaluate(self._path, dict(feeds)).values())
        return {s.name: np.asarray(v) for s, v in zip(self.outputs, got)}


class CompositeRunner(Runner):
    backend = "composite"

    def __init__(self, plan: dict, plan_path: Path, board: str | None, threads: int | None,
                 evaluators: dict | None = None):
        from . import for_format, get

        self.plan = plan
        self.board = board or _host_board(plan)
        if self.board not in plan.get("boards", []):
            raise InputError(f"board {self.board!r} has no kernels in this composite; it has: "
                             f"{', '.join(plan.get('boards', []))}")
        self.inputs = [TensorSpec.from_json(s) for s in plan["inputs"]]
        self.outputs = [TensorSpec.from_json(s) for s in plan["outputs"]]
        folder = plan_path.parent
        self._steps: list[_Step] = []
        backends = set()
        try:
            for step in plan["steps"]:
                arts = step.get("artifacts", {})
                if step["kind"] == "tvm":
                    why = get("tvm").unavailable_reason()
                    if why:
                        raise BackendUnavailable(f"step {step['name']} needs TVM kernels: {why}")
                    if self.board not in arts:
                        raise ModelLoadError(f"step {step['name']}: no TVM kernel for board {self.board!r}")
                    backend, rel = get("tvm"), arts[self.board]
                else:
                    rel = arts.get("any")
                    try:
                        backend = for_format(step["format"])
                    except BackendUnavailable:
                        if step["format"] not in (evaluators or {}):
                            raise
                        backend = None
                art = (folder / str(rel)).resolve()
                if folder.resolve() not in art.parents:
                    raise ModelLoadError(f"step {step['name']}: artifact path {rel!r} leaves the composite folder")
                opts = {"threads": threads} if threads else {}
                if backend is None:
                    runner = _EvalRunner(evaluators[step["format"]], art, step)
                else:
                    runner = backend.open(art, **opts)
                backends.add(runner.backend)
                self._steps.append(_Step(step["name"], runner, [s["name"] for s in step["inputs"]],
                                         [s["name"] for s in step["outputs"]]))
        except BaseException:
            self.close()
            raise
        self.backends = sorted(backends)
        # when each hand-off tensor is last needed, so it can be dropped early
        self._last_use: dict[str, int] = {}
        for i, step in enumerate(plan["steps"]):
            for s in step["inputs"]:
                self._last_use[s["name"]] = i

    def run(self, feeds, output_names):
        wanted = list(output_names) if output_names else [s.name for s in self.outputs]
        keep = set(wanted)
        env: dict[str, Any] = dict(feeds)
        for i, step in enumerate(self._steps):
            step.run(env)
            for name in [n for n, last in self._last_use.items() if last == i and n not in keep]:
                env.pop(name, None)
        return {n: env[n] for n in wanted}

    def close(self) -> None:
        for step in getattr(self, "_steps", []):
            step.runner.close()


@register
class CompositeBackend(Backend):
    name = "composite"
    formats = ("composite",)
    extra = ""
    description = "edgekit composite plan: runtime segments plus TVM kernels for the ops the runtime lacks"

    def _probe(self) -> str | None:
        return None  # each step's backend reports its own absence when the plan is opened

    def open(self, path: Path, board: str | None = None, threads: int | None = None,
             evaluators: dict | None = None, **options: Any) -> Runner:
        """``evaluators``: {format: evaluate(path, feeds)} for runtime steps no backend here can run (graph checks)."""
        if options:
            raise InputError(f"unknown option(s) for composite: {', '.join(sorted(options))}")
        plan, plan_path = read_plan(Path(path))
        return CompositeRunner(plan, plan_path, board, threads, evaluators)

    def inspect(self, path: Path) -> dict:
        plan, _ = read_plan(Path(path))
        ops: dict[str, int] = {}
        for step in plan["steps"]:
            for k, v in step.get("ops", {}).items():
                ops[k] = ops.get(k, 0) + v
        return {
            "target_format": plan.get("target_format"), "boards": plan.get("boards"), "ops": ops,
            "steps": [{"name": s["name"], "kind": s["kind"], "format": s["format"], "ops": s.get("ops", {})}
                      for s in plan["steps"]],
            "handoffs": len(plan.get("tensors", [])), "validation": plan.get("validation"),
        }
