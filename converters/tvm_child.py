"""Run TVM compiler work in a child process, so that TVM cannot take the caller down.

TVM 0.27 can segfault in its C++ code (``tvm::s_tir::Tensorize``, ``tvm::ffi::ToJSONGraph``) while compiling or
tuning; it can also hang. :func:`call` runs a module-level function in a child process and turns a crash or a
hang into a :class:`ConversionError` naming the work and the signal. The child's environment never carries
``TVM_USE_RUNTIME_LIB`` (a runtime-only TVM in this process does not reach it), it imports the compiler once and
stays warm for later calls (a cold child costs ~15-35 s here, a warm compile of a small segment ~1 s), and it exits
when this process closes its pipe or after ``IDLE_EXIT_S`` without work. Its output (TVM's warnings, a crash's
backtrace) goes to a temporary log file, kept and named in the error when it crashed or hung (with the CLI's
``--verbose``, to this process's output instead).

Environment:

- ``EDGEKIT_TVM_COMPILE_TIMEOUT``: seconds one call may take before the child is stopped (default 3600).
- ``EDGEKIT_TEST_CRASH_TVM_CHILD`` (tests only; read in the caller at each call): ``segv`` makes the child kill
  itself with SIGSEGV just before TVM compiles, ``hang`` makes it sleep instead; tests use it to check that the
  caller survives a real crash or hang.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from edgekit.errors import ConversionError, EdgekitError

TIMEOUT_ENV = "EDGEKIT_TVM_COMPILE_TIMEOUT"
CRASH_ENV = "EDGEKIT_TEST_CRASH_TVM_CHILD"
RUNTIME_ONLY_ENV = "TVM_USE_RUNTIME_LIB"
DEFAULT_TIMEOUT = 3600.0
#: idle warm children kept for later calls; a child is replaced after this many calls (TVM leaks a little)
MAX_IDLE, MAX_CALLS = 2, 64
#: a child exits after this many seconds without work (it holds TVM's compiler, ~400 MB); the caller stops
#: using one IDLE_MARGIN_S before that, so a call never meets a child that is leaving
IDLE_EXIT_S, IDLE_MARGIN_S = 300.0, 60.0

#: True inside a child: compiler work runs here in-process
IN_CHILD = False
#: the caller's EDGEKIT_TEST_CRASH_TVM_CHILD for the current call (sent with each call: warm children see changes)
_HOOK: list[str | None] = [None]

_LOCK = threading.Lock()
_IDLE: list[_Child] = []


def signal_name(exitcode: int | None) -> str:
    """``SIGSEGV`` for exit code -11, ``exit status 3`` for 3."""
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


def _timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise ConversionError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None


def crash_hook_for_tests() -> None:
    """The crash/hang hook of the tests (``EDGEKIT_TEST_CRASH_TVM_CHILD``), called by compiles just before TVM
    compiles; does nothing when unset or outside a child."""
    if not IN_CHILD:
        return
    mode = (_HOOK[0] or "").strip().lower()
    if mode in ("segv", "1", "crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    elif mode == "hang":
        time.sleep(1e6)


def _serve(conn) -> None:
    """Child loop: receive (function, args, kwargs, wants_log, test hook); reply ("ok", result) or
    ("err", class, message), after any ("log", text) lines."""
    global IN_CHILD
    IN_CHILD = True
    os.environ.pop(RUNTIME_ONLY_ENV, None)
    while True:
        try:
            if not conn.poll(IDLE_EXIT_S):
                return
            fn, args, kwargs, wants_log, _HOOK[0] = conn.recv()
        except (EOFError, OSError):
            return
        if wants_log:
            kwargs = {**kwargs, "log": lambda msg: conn.send(("log", str(msg)))}
        try:
            reply = ("ok", fn(*args, **kwargs))
        except EdgekitError as exc:
            reply = ("err", type(exc).__name__, str(exc))
        except Exception as exc:  # noqa: BLE001 - any TVM failure is reported to the parent as a message
            text = str(exc).strip()
            reply = ("err", "", text.splitlines()[-1] if text else type(exc).__name__)
        conn.send(reply)


class _Child:
    """One child process (``python -m edgekit.converters.tvm_child FD``) and its end of a socket pair.

    A plain subprocess rather than multiprocessing's spawn: spawn re-imports the caller's main module, which
    breaks scripts without an ``if __name__ == "__main__"`` guard; this child imports only edgekit.
    """

    def __init__(self) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if k != RUNTIME_ONLY_ENV}  # the child needs the compiler
        from edgekit._quiet import verbose

        fd, self.log_path = tempfile.mkstemp(prefix="edgekit-tvm-", suffix=".log")
        sink = None if verbose() else fd  # TVM's warnings and crash backtraces: a log named in crash messages
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno()), self.log_path],
                                         pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                                         stdout=sink, stderr=sink)
        except OSError as exc:
            ours.close()
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)
            raise ConversionError(f"cannot start the TVM compiler process ({sys.executable}): {exc}") from None
        finally:
            theirs.close()
            os.close(fd)
        self.conn = Connection(ours.detach())
        self.calls = 0
        self.last_used = time.monotonic()

    def call(self, fn: Callable, args: tuple, kwargs: dict, what: str, log, timeout: float, hint: str) -> Any:
        from multiprocessing.connection import wait

        self.calls += 1
        self.conn.send((fn, args, kwargs, log is not None, os.environ.get(CRASH_ENV)))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not wait([self.conn], timeout=left):
                self.kill()
                raise ConversionError(f"TVM hung: no result after {timeout:g} s {what} (its child process was "
                                      f"stopped; {TIMEOUT_ENV} sets the limit in seconds{self._log_note()}){hint}")
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                code = self._wait(10)
                self.kill()
                verb = "crashed" if code is not None and code < 0 else "failed"
                note = self._log_note()
                raise ConversionError(f"TVM {verb} ({signal_name(code)}) {what}{f' ({note[2:]})' if note else ''}"
                                      f"{hint}") from None
            if msg[0] == "log":
                log(msg[1])
                continue
            self.last_used = time.monotonic()
            if msg[0] == "ok":
                return msg[1]
            return _raise(msg[1], msg[2], what)

    def _wait(self, seconds: float) -> int | None:
        import subprocess

        try:
            return self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return None

    def alive(self) -> bool:
        """Running, and not about to leave for lack of work."""
        fresh = time.monotonic() - self.last_used < IDLE_EXIT_S - IDLE_MARGIN_S
        return fresh and self.proc.poll() is None and not self.conn.closed

    def close(self, wait_s: float = 5.0) -> None:
        """Let the child exit (its pipe closes), stopping it when it does not; its log goes (no crash to keep)."""
        if not self.conn.closed:
            self.conn.close()
        if self._wait(wait_s) is None:
            self.kill()
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)

    def _log_note(self) -> str:
        """``"; its output: PATH"`` when the child wrote something, else "" (and the empty log goes)."""
        try:
            if os.path.getsize(self.log_path):
                return f"; its output: {self.log_path}"
            os.unlink(self.log_path)
        except OSError:
            pass
        return ""

    def kill(self) -> None:
        if not self.conn.closed:
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self._wait(10)


def _raise(cls_name: str, message: str, what: str):
    """Re-raise a child's error here: edgekit's own errors keep their class, others become ConversionError."""
    from edgekit import errors

    cls = getattr(errors, cls_name, None) if cls_name else None
    if isinstance(cls, type) and issubclass(cls, EdgekitError):
        raise cls(message)
    raise ConversionError(f"TVM failed {what}: {message}")


def call(fn: Callable, *args: Any, what: str, log: Callable[[str], None] | None = None, hint: str = "",
         **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a warm TVM child (in-process inside one); ``fn`` must be module-level.

    ``what`` completes the error messages ("compiling segment 3 (ops: Conv) for rpi4"); ``log`` receives the
    child's ``log(msg)`` calls (``fn`` must then take ``log``); ``hint`` is appended to crash and hang messages.
    A crash or hang is a ConversionError and the child is replaced; an error raised by ``fn`` keeps its class
    when it is an EdgekitError, else it becomes a ConversionError.
    """
    if IN_CHILD:
        return fn(*args, **({"log": log} if log is not None else {}), **kwargs)
    timeout = _timeout()
    with _LOCK:
        child = _IDLE.pop() if _IDLE else None
    if child is None or not child.alive():
        if child is not None:
            child.close(0.1)  # idle too long (or gone): its log holds no crash
        child = _Child()
    ok = False
    try:
        result = child.call(fn, args, kwargs, what, log, timeout, hint)
        ok = True
        return result
    except EdgekitError:
        ok = child.alive()  # fn's own error: the child is fine
        raise
    finally:
        _release(child, ok)


def _release(child: _Child, ok: bool) -> None:
    if not ok or child.calls >= MAX_CALLS:
        child.close() if ok else child.kill()
        return
    with _LOCK:
        if len(_IDLE) < MAX_IDLE:
            _IDLE.append(child)
            return
    child.close()


@atexit.register
def shutdown() -> None:
    """Close the warm children (they exit when their pipe closes)."""
    with _LOCK:
        idle, _IDLE[:] = list(_IDLE), []
    for child in idle:
        child.close(2.0)


def main(argv: list[str]) -> None:
    """Child entry point: serve calls on the inherited socket ``argv[0]`` until the parent closes it or no work
    comes; then remove the log file ``argv[1]`` (a crashed child keeps it: the parent names it)."""
    from multiprocessing.connection import Connection

    _serve(Connection(int(argv[0])))
    with contextlib.suppress(OSError, IndexError):
        os.unlink(argv[1])


if __name__ == "__main__":
    import sys

    from edgekit.converters import tvm_child as _self  # the module object the compiler functions import

    _self.main(sys.argv[1:])
