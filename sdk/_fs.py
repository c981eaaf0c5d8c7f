"""Atomic file output and content hashing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/edgekit``, else ``~/.cache/edgekit``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "edgekit"


def cache_root() -> Path:
    """Where edgekit caches profiles, prepared app models and tuning logs: ``$EDGEKIT_CACHE_DIR`` if set, else
    :func:`user_cache_root`. (The large converter tool environments have their own ``$EDGEKIT_TOOLS_DIR``.)"""
    root = os.environ.get("EDGEKIT_CACHE_DIR")
    return Path(root).expanduser() if root else user_cache_root()


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a directory tree (relative paths and file hashes, sorted)."""
    p = Path(path)
    if p.is_file():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256_path(f).encode() + b"\n")
    return h.hexdigest()


def size_of(path: str | Path) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(q.stat().st_size for q in p.rglob("*") if q.is_file())


def check_writable(out: Path, force: bool) -> None:
    """Raise :class:`OutputExistsError` if ``out`` exists and ``force`` is false."""
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; pass --force (force=True) to overwrite it")


def _replace(tmp: Path, out: Path) -> None:
    """Put ``tmp`` in place of ``out``: one atomic rename for files; for folders, the old one is moved aside
    under a unique name first (a folder cannot be replaced atomically) and restored if the swap fails."""
    if not out.is_dir() or out.is_symlink():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on error it vanishes."""
    out = Path(out)
    check_writable(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``out``; on success it replaces ``out``."""
    out = Path(out)
    check_writable(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
