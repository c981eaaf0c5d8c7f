"""Write a bundle atomically: artifacts are added to a temporary folder that replaces OUT at ``finish``."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ._fs import atomic_dir, sha256_path, size_of
from .bundle import SCHEMA_VERSION, Bundle, Variant
from .specs import TensorSpec


class BundleWriter:
    """Usage::

        with BundleWriter(out, force=False, source=src_path) as w:
            w.add_variant("onnx-fp32", "onnx", "fp32", artifact_path, inputs, outputs, validation={...})
            w.report = "# report ..."
        bundle = w.bundle   # available after the with-block succeeded
    """

    def __init__(self, out: str | Path, force: bool = False, source: str | Path | None = None,
                 inputs: list[TensorSpec] | None = None, outputs: list[TensorSpec] | None = None,
                 meta: dict | None = None):
        self.out = Path(out)
        self.force = force
        self.source = Path(source) if source else None
        self.inputs = inputs or []
        self.outputs = outputs or []
        self.meta = dict(meta or {})
        self.variants: list[Variant] = []
        self.report: str = ""
        self.bundle: Bundle | None = None
        self._ctx = None
        self.tmp: Path | None = None

    def __enter__(self) -> BundleWriter:
        self._ctx = atomic_dir(self.out, force=self.force)
        self.tmp = self._ctx.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._write_manifest()
            except BaseException as e:
                self._ctx.__exit__(type(e), e, e.__traceback__)
                raise
        self._ctx.__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.bundle = Bundle(self.out)
        return False

    def path_for(self, rel: str) -> Path:
        """An absolute path inside the bundle being written (parent folders created)."""
        assert self.tmp is not None, "use BundleWriter as a context manager"
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def add_variant(self, vid: str, fmt: str, precision: str, artifact: str | Path,
                    inputs: list[TensorSpec], outputs: list[TensorSpec], validation: dict | None = None,
                    pruning: str | None = None, companions: list[str | Path] = (), **extra: Any) -> Variant:
        """Register an artifact (copied in if it lies outside the bundle) and its companion files."""
        assert self.tmp is not None, "use BundleWriter as a context manager"
        companions = [Path(c) for c in companions]
        if fmt == "tvm":  # the library and its signature are loaded together: both are hashed
            from .runtimes.tvm import read_signature

            src = Path(artifact)
            sidecar = src if src.suffix == ".json" else src.with_suffix(".json")
            for c in (sidecar, read_signature(src)[1]):
                if c.resolve() != src.resolve() and c.resolve() not in [x.resolve() for x in companions]:
                    companions.append(c)
        rel = self._adopt(Path(artifact), vid)
        files = []
        for c in companions:
            crel = self._adopt(Path(c), vid)
            files.append({"path": crel, "sha256": sha256_path(self.tmp / crel)})
        v = Variant(id=vid, format=fmt, precision=precision, path=rel, sha256=sha256_path(self.tmp / rel),
                    size=size_of(self.tmp / rel) + sum(size_of(self.tmp / f["path"]) for f in files),
                    inputs=list(inputs), outputs=list(outputs), validation=dict(validation or {}),
                    pruning=pruning, files=files, extra=dict(extra))
        self.variants = [x for x in self.variants if x.id != vid] + [v]
        return v

    def _adopt(self, p: Path, vid: str) -> str:
        tmp = self.tmp.resolve()
        rp = p.resolve()
        if tmp in rp.parents:
            return rp.relative_to(tmp).as_posix()
        dest = self.path_for(f"{vid}/{p.name}")
        if p.is_dir():
            shutil.copytree(p, dest)
        else:
            shutil.copy2(p, dest)
        return dest.relative_to(self.tmp).as_posix()

    def _write_manifest(self) -> None:
        from . import __version__

        manifest = {
            "schema_version": SCHEMA_VERSION,
            "edgekit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": ({"name": self.source.name, "sha256": sha256_path(self.source)} if self.source else {}),
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            **self.meta,
            "variants": [v.to_json() for v in self.variants],
        }
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if self.report:
            (self.tmp / "report.md").write_text(self.report)
