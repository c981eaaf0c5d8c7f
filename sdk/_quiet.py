"""Quiet output: capture what native and Python libraries print (fd 1/2) into a log, keep our own progress visible.

``captured(log_path, verbose)`` redirects file descriptors 1 and 2 at the OS level, so C/C++ output (LiteRT's
"Created TensorFlow Lite XNNPACK delegate", TVM warnings, coremltools' tqdm bars, child processes) goes to the
log; ``sys.stdout``/``sys.stderr`` are swapped for streams on those descriptors, so Python ``print``, ``warnings``,
``logging`` to stderr and tqdm land there too, even where ``sys.stderr`` was not a file (pytest, notebooks).

Limits (fd redirection is process-wide): one capturing thread at a time. Regions nest in the thread that owns the
outermost one (an inner region writes to its own log, then the outer destination is restored); a region entered by
another thread while one is active changes nothing, so that thread's output goes to the active destination. Logging
handlers that hold a non-file stream (e.g. pytest's) keep writing to it. Windows is not supported (no-op there).

``filtered()`` wraps short native calls that print banners (LiteRT's interpreter creation, coremltools' import):
it captures their output, then re-emits on its own stream every line that is not in :data:`NOISE`, or all of them
when :func:`verbose` (the CLI's ``--verbose``, set with :func:`set_verbose`). ``terminal()`` and ``progress_enabled()``
are for our own progress output.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

_lock = threading.RLock()
_owner: int | None = None  # thread id of the outermost active region
_depth = 0
_real_fds: tuple[int, int] | None = None  # dups of fd 1 and fd 2 taken on entering the outermost region
_verbose = False

#: lines native libraries print that say nothing to a user (dropped by :func:`filtered` unless verbose)
NOISE: tuple[re.Pattern, ...] = (
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate"),
    re.compile(r"^INFO: Initialized TensorFlow Lite runtime"),
    re.compile(r"^Failed to load _ML\w*Proxy: No module named 'coremltools\.libcoremlpython'"),
    re.compile(r"^scikit-learn version .* is not supported\. .*Disabling scikit-learn conversion API\."),
    re.compile(r"^Torch version .* has not been tested with coremltools\."),
)


def set_verbose(on: bool) -> None:
    """Process-wide: show library output as it comes (the CLI's ``--verbose``; also ``EDGEKIT_VERBOSE=1``)."""
    global _verbose
    _verbose = bool(on)


def verbose() -> bool:
    """Whether library output is shown (``set_verbose(True)`` or ``EDGEKIT_VERBOSE=1``)."""
    return _verbose or os.environ.get("EDGEKIT_VERBOSE", "") not in ("", "0")


def _fflush_libc() -> None:
    """Flush C stdio buffers (``printf``/``puts`` output sits there when stdout is not a terminal)."""
    try:
        ctypes.CDLL(None).fflush(None)
    except Exception:  # no libc here (e.g. Windows): nothing buffered that we could flush
        pass


def _flush_python() -> None:
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass


class _Terminal(io.TextIOBase):
    """Text stream to the real stderr saved before redirection (``sys.stderr`` when nothing is captured)."""

    def write(self, s: str) -> int:
        fds = _real_fds
        if fds is None:
            return sys.stderr.write(s)
        os.write(fds[1], s.encode("utf-8", "replace"))
        return len(s)

    def flush(self) -> None:
        if _real_fds is None:
            sys.stderr.flush()

    def isatty(self) -> bool:
        fds = _real_fds
        if fds is None:
            try:
                return sys.stderr.isatty()
            except Exception:
                return False
        return os.isatty(fds[1])

    def fileno(self) -> int:
        return _real_fds[1] if _real_fds is not None else sys.stderr.fileno()


_TERMINAL = _Terminal()


def terminal() -> TextIO:
    """A text stream to the terminal's stderr that stays visible inside :func:`captured` (for our own progress)."""
    return _TERMINAL  # type: ignore[return-value]


def progress_enabled(requested: bool = True, stream: TextIO | None = None) -> bool:
    """True when a progress bar was ``requested`` and ``stream`` (default: :func:`terminal`) is a terminal.

    Otherwise callers print one plain line per item: a bar on a pipe or file writes one line per update.
    """
    if not requested:
        return False
    stream = stream if stream is not None else terminal()
    try:
        return bool(stream.isatty())
    except Exception:
        return False


class _Tee:
    """Copies everything written to a pipe into ``targets`` (file descriptors, duplicated) from a thread.

    A child process that inherited the pipe (a warm worker) keeps it open after the region: the thread then lives
    on with its own copies of the targets, so closing the region's descriptors never redirects its writes."""

    def __init__(self, targets: list[int]):
        self.read_fd, self.write_fd = os.pipe()
        self.targets = [os.dup(fd) for fd in targets]
        self.thread = threading.Thread(target=self._pump, name="edgekit-tee", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        while True:
            data = os.read(self.read_fd, 65536)
            if not data:
                break
            for fd in self.targets:
                with contextlib.suppress(OSError):
                    os.write(fd, data)
        for fd in (self.read_fd, *self.targets):
            os.close(fd)

    @staticmethod
    def close_all(tees: list[_Tee], wait_s: float = 1.0) -> None:
        """Close the pipes' write ends, then wait (``wait_s`` in all) until what was written is copied."""
        for tee in tees:
            os.close(tee.write_fd)
        deadline = time.monotonic() + wait_s
        for tee in tees:  # a child process still holding a pipe keeps its thread alive: do not wait for it
            tee.thread.join(timeout=max(deadline - time.monotonic(), 0.0))


def _open_sink(log_path: Path | None) -> int:
    if log_path is None:
        return os.open(os.devnull, os.O_WRONLY)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    return os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


@contextlib.contextmanager
def captured(log_path: Path | None, verbose: bool = False) -> Iterator[None]:
    """Send fd 1/2 and Python's stdout/stderr into ``log_path`` (appended; None: discarded) while active.

    ``verbose=True`` passes the output through to where it went before, and still copies it into the log.
    Nestable; see the module docstring for the threading limits.
    """
    if verbose and log_path is None:
        yield
        return
    with _region(_open_sink(log_path), verbose):
        yield


@contextlib.contextmanager
def filtered(noise: tuple[re.Pattern, ...] | None = None) -> Iterator[list[str]]:
    """Capture a block's output, then re-emit the lines that are not known noise (all with --verbose), stdout's
    on stdout and stderr's on stderr.

    Yields a list that holds every captured line once the block is over (for error messages). For short native
    calls that print a banner, e.g. LiteRT's "Created TensorFlow Lite XNNPACK delegate for CPU.".
    """
    lines: list[str] = []
    tmps = (tempfile.TemporaryFile(), tempfile.TemporaryFile())  # unlinked at once: nothing is left on disk
    try:
        with _region(os.dup(tmps[0].fileno()), False, os.dup(tmps[1].fileno())):
            yield lines
    finally:
        patterns = NOISE if noise is None else noise
        _flush_python()
        for fd, tmp in zip((1, 2), tmps):
            tmp.seek(0)
            got = tmp.read().decode("utf-8", "replace").splitlines()
            tmp.close()
            lines += got
            keep = got if verbose() else [x for x in got if not any(p.search(x) for p in patterns)]
            if keep:
                with contextlib.suppress(OSError):
                    os.write(fd, ("\n".join(keep) + "\n").encode("utf-8", "replace"))


@contextlib.contextmanager
def _region(sink: int, verbose: bool, sink_err: int | None = None) -> Iterator[None]:
    """Point fd 1 and 2 (and new Python streams on them) at ``sink`` (fd 2 at ``sink_err`` when given; both closed
    on exit); tee when ``verbose``."""
    global _owner, _depth, _real_fds
    me = threading.get_ident()
    with _lock:
        active = sys.platform != "win32" and _owner in (None, me)
        if active:
            _flush_python()
            _fflush_libc()
            saved = (os.dup(1), os.dup(2))
            if _depth == 0:
                _owner, _real_fds = me, (os.dup(1), os.dup(2))
            _depth += 1
    if not active:
        for fd in {sink, sink_err} - {None}:
            os.close(fd)
        yield
        return
    tees: list[_Tee] = []
    if verbose:  # log + the previous destination, each stream on its own pipe
        tees = [_Tee([saved[0], sink]), _Tee([saved[1], sink])]
        os.dup2(tees[0].write_fd, 1)
        os.dup2(tees[1].write_fd, 2)
    else:
        os.dup2(sink, 1)
        os.dup2(sink if sink_err is None else sink_err, 2)
    old_streams = (sys.stdout, sys.stderr)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    try:
        yield
    finally:
        _flush_python()
        _fflush_libc()
        sys.stdout, sys.stderr = old_streams
        with _lock:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            _Tee.close_all(tees)
            for fd in {*saved, sink, sink_err} - {None}:
                os.close(fd)
            _depth -= 1
            if _depth == 0:
                for fd in _real_fds or ():
                    os.close(fd)
                _owner, _real_fds = None, None
