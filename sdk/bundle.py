"""Bundles: a folder with ``manifest.json``, the variant artifacts and ``report.md``.

Loading checks, before anything is opened, that every path in the manifest stays inside the bundle and
that each artifact's sha256 matches (native libraries above all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runtimes
from ._fs import sha256_path
from .errors import BackendUnavailable, InputError, ModelLoadError
from .runtimes.base import RenamedRunner
from .specs import TensorSpec

SCHEMA_VERSION = 1
#: precision order used to break ties between equally accurate variants (more bits first)
_PRECISION_RANK = {"fp32": 0, "fp16": 1, "int8-dynamic": 2, "int8": 3}


@dataclass
class Variant:
    """One artifact of a bundle: a format, a precision, maybe pruning, and its validation metrics."""

    id: str
    format: str
    precision: str
    path: str
    sha256: str
    size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    validation: dict = field(default_factory=dict)
    pruning: str | None = None
    files: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> Variant:
        known = {"id", "format", "precision", "path", "sha256", "size", "inputs", "outputs", "validation",
                 "pruning", "files"}
        return cls(
            id=str(d["id"]), format=str(d["format"]), precision=str(d.get("precision", "fp32")),
            path=str(d["path"]), sha256=str(d["sha256"]), size=int(d.get("size", 0)),
            inputs=[TensorSpec.from_json(s) for s in d.get("inputs", [])],
            outputs=[TensorSpec.from_json(s) for s in d.get("outputs", [])],
            validation=dict(d.get("validation") or {}), pruning=d.get("pruning"),
            files=list(d.get("files") or []), extra={k: v for k, v in d.items() if k not in known},
        )

    def to_json(self) -> dict:
        d = {
            "id": self.id, "format": self.format, "precision": self.precision, "pruning": self.pruning,
            "path": self.path, "sha256": self.sha256, "size": self.size,
            "inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs],
            "validation": self.validation, "files": self.files,
        }
        d.update(self.extra)
        return d

    @property
    def passed(self) -> bool:
        return bool(self.validation.get("passed", self.precision == "fp32" and not self.pruning))

    @property
    def accuracy(self) -> float:
        """The validation score used to rank variants (top-1 agreement, else cosine; 1.0 for the source)."""
        v = self.validation
        for key in ("top1", "cosine"):
            if v.get(key) is not None:
                return float(v[key])
        return 1.0 if self.precision == "fp32" and not self.pruning else 0.0


class Bundle:
    """A converted model: its manifest and variants. ``Bundle(path)`` reads and checks the manifest."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            raise ModelLoadError(f"{self.path}: not a bundle (no manifest.json)")
        try:
            self.manifest: dict = json.loads(mpath.read_text())
        except ValueError as exc:
            raise ModelLoadError(f"{mpath}: invalid JSON ({exc})") from None
        if not isinstance(self.manifest, dict):
            raise ModelLoadError(f"{mpath}: the manifest is not a JSON object")
        version = self.manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ModelLoadError(f"{mpath}: unsupported schema_version {version!r} (expected {SCHEMA_VERSION})")
        try:
            self.variants = [Variant.from_json(v) for v in self.manifest["variants"]]
            for v in self.variants:
                for rel in [v.path] + [f["path"] for f in v.files]:
                    self._inside(rel)
                _ = [f["sha256"] for f in v.files]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{mpath}: malformed variant entry ({exc!r})") from None

    @property
    def failed(self) -> list[dict]:
        """Variants the conversion could not build: variant, stage, error (class name), message, node."""
        return list(self.manifest.get("failed") or [])

    def _inside(self, rel: str) -> Path:
        root = self.path.resolve()
        p = (root / str(rel)).resolve()
        if root not in p.parents:  # the bundle root itself is no artifact either
            raise ModelLoadError(f"{self.path}: manifest path {rel!r} leaves the bundle folder")
        return p

    def variant(self, vid: str) -> Variant:
        for v in self.variants:
            if v.id == vid:
                return v
        raise InputError(f"no variant {vid!r} in {self.path}; variants: {', '.join(v.id for v in self.variants)}")

    def artifact(self, v: Variant) -> Path:
        return self._inside(v.path)

    def verify(self, v: Variant) -> None:
        """Check, before anything is opened, that ``v``'s artifact is what the manifest says it is.

        Every file that will be loaded must be hashed in the manifest: the artifact (a folder - .mlpackage or a
        composite - is hashed as a whole tree) and its companions; a TVM signature's library must be one of them.
        """
        from .formats import detect_format

        hashed = {}
        for rel, digest in [(v.path, v.sha256)] + [(f["path"], f["sha256"]) for f in v.files]:
            p = self._inside(rel)
            if not p.exists():
                raise ModelLoadError(f"{self.path}: variant {v.id}: {rel} is missing")
            link = _first_symlink(self.path / str(rel))
            if link is not None:
                raise ModelLoadError(f"{self.path}: variant {v.id}: {link} is a symlink (a bundle holds regular "
                                     f"files only: what it points to is not what was hashed)")
            if sha256_path(p) != digest:
                raise ModelLoadError(f"{self.path}: variant {v.id}: sha256 of {rel} does not match the manifest")
            hashed[p] = rel
        art = self._inside(v.path)
        fmt = detect_format(art)
        if fmt != v.format:
            raise ModelLoadError(f"{self.path}: variant {v.id} is declared {v.format!r} but {v.path} is {fmt!r}")
        if fmt == "composite" and not art.is_dir():
            raise ModelLoadError(f"{self.path}: variant {v.id}: a composite must be its folder (hashed as a whole)")
        if fmt == "tvm":
            from .runtimes.tvm import read_signature

            meta_path = art if art.suffix == ".json" else art.with_suffix(".json")
            _, lib = read_signature(art)
            for needed in (meta_path, lib):
                if needed.resolve() not in hashed:
                    raise ModelLoadError(f"{self.path}: variant {v.id}: {needed.name} is not hashed in the manifest")

    def runnable(self, backend: str = "auto") -> list[Variant]:
        """Variants some usable backend here can run, best first."""
        out = []
        for v in self.variants:
            if _backend_for(v, backend) is not None:
                out.append(v)
        return sorted(out, key=rank_key)

    def best(self, backend: str = "auto") -> Variant:
        """The best-validated variant this host can run."""
        cands = [v for v in self.runnable(backend) if v.passed]
        if not cands:
            reasons = "; ".join(f"{v.id}: {_why_not(v, backend)}" for v in self.variants)
            raise BackendUnavailable(f"{self.path}: no variant passes validation and runs here ({reasons})")
        return cands[0]

    def load(self, variant: str | Variant | None = None, backend: str = "auto", **options: Any):
        """A :class:`~edgekit.Session` on one variant (default: :meth:`best`)."""
        from .loader import load
        from .session import Session

        v = self.best(backend) if variant is None else (
            variant if isinstance(variant, Variant) else self.variant(variant))
        self.verify(v)
        sess = load(self.artifact(v), backend=backend, **options)
        if not isinstance(sess, Session):  # pragma: no cover - defensive
            raise ModelLoadError(f"{self.path}: variant {v.id} did not load as a session")
        want_in = [s.name for s in v.inputs]
        want_out = [s.name for s in v.outputs]
        if want_in and want_out and (want_in != [s.name for s in sess.inputs]
                                     or want_out != [s.name for s in sess.outputs]):
            sess = Session(RenamedRunner(sess._runner, want_in, want_out), path=sess.path, fmt=sess.format)
        sess.variant = v.id
        return sess

    def table(self) -> list[dict]:
        """One row per variant for display."""
        rows = []
        for v in self.variants:
            val = v.validation
            rows.append({
                "id": v.id, "format": v.format, "precision": v.precision, "pruning": v.pruning or "",
                "size": v.size, "cosine": val.get("cosine"), "top1": val.get("top1"),
                "max_abs": val.get("max_abs"), "passed": v.passed, "check": val.get("method", ""),
                "runs_here": _backend_for(v, "auto") is not None,
            })
        return rows


def _first_symlink(p: Path) -> Path | None:
    """``p`` itself or the first symlink (to a file or a folder) inside the tree of folder ``p``, else None."""
    import os

    if p.is_symlink():
        return p
    if p.is_dir():
        for top, dirs, files in os.walk(p):
            for name in sorted(dirs + files):
                if (Path(top) / name).is_symlink():
                    return Path(top) / name
    return None


def rank_key(v: Variant) -> tuple:
    """Sort key: passed first, then accuracy, then the one taking more input shapes (more dynamic dims: a
    fixed-shape export loses to a dynamic one it ties with), then more precise, then smaller."""
    dynamic = sum(not (isinstance(d, int) and d >= 0) for s in v.inputs for d in s.shape)
    return (not v.passed, -round(v.accuracy, 6), -dynamic, _PRECISION_RANK.get(v.precision, 9), bool(v.pruning),
            v.size)


def _backend_for(v: Variant, backend: str):
    fmt = "tvm" if v.format == "tvm" else v.format
    try:
        b = runtimes.for_format(fmt) if backend == "auto" else runtimes.get(backend)
    except BackendUnavailable:
        return None
    if fmt not in b.formats or b.unavailable_reason() is not None:
        return None
    return b


def _why_not(v: Variant, backend: str) -> str:
    if _backend_for(v, backend) is None:
        try:
            runtimes.for_format(v.format)
        except BackendUnavailable as exc:
            return str(exc)
        return f"backend {backend} cannot run {v.format}"
    return "failed validation"


def load_bundle(path: str | Path, variant: str | None = None, backend: str = "auto",
                budget_ms: float | None = None, **options: Any):
    """Open a bundle as a Session (one variant), or a budgeted session when ``budget_ms`` is given."""
    bundle = Bundle(path)
    if budget_ms is not None:
        from .budget import BudgetedSession

        return BudgetedSession(bundle, budget_ms=budget_ms, backend=backend, variants=variant, **options)
    return bundle.load(variant, backend=backend, **options)
