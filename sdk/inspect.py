"""``inspect_model``: format, inputs/outputs, op histogram, parameters, size and opset of a model or bundle."""

from __future__ import annotations

from pathlib import Path

from . import runtimes
from ._fs import size_of
from ._quiet import filtered
from .errors import BackendUnavailable, ModelLoadError
from .formats import detect_format


def inspect_model(path: str | Path) -> dict:
    """Facts about ``path`` without running it (a bundle gives its manifest's variant table)."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "bundle":
        from .bundle import Bundle

        b = Bundle(p)
        return {
            "path": str(p), "format": "bundle", "size": size_of(p),
            "source": b.manifest.get("source", {}), "edgekit_version": b.manifest.get("edgekit_version"),
            "inputs": b.manifest.get("inputs", []), "outputs": b.manifest.get("outputs", []),
            "variants": b.table(),
        }
    backend = next(b for b in runtimes.all_backends() if fmt in b.formats)
    info: dict = {"path": str(p), "format": fmt, "size": size_of(p)}
    try:
        with filtered():  # runtime banners (coremltools' import, LiteRT's delegate line) unless --verbose
            info.update(backend.inspect(p))
    except ModelLoadError as exc:
        from .loader import unreadable_error

        raise unreadable_error(p, fmt, exc) from None
    if "inputs" not in info:
        try:
            from .loader import load

            with load(p) as sess:
                info["inputs"] = [s.to_json() for s in sess.inputs]
                info["outputs"] = [s.to_json() for s in sess.outputs]
                info["backend"] = sess.backend
        except BackendUnavailable as exc:
            info["note"] = str(exc)
    return info
