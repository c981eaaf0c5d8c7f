"""Isolated, cached tool environments for converters that pin an old stack (onnx2tf: numpy 1, TF 2.19).

A tool environment is a virtualenv under the user's cache folder
(``$EDGEKIT_TOOLS_DIR`` or ``$XDG_CACHE_HOME/edgekit/tools`` or ``~/.cache/edgekit/tools``), named after the
tool, its version, the Python version and a hash of the pinned requirements. It is built once on first use
(with pip's progress shown on stderr) and reused afterwards; the SDK's own environment is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import ConversionError

_MARKER = "edgekit-toolenv.json"


class ToolEnvError(ConversionError):
    """A tool environment cannot be created or is broken; the message says where and why."""


@dataclass(frozen=True)
class ToolEnv:
    """A pinned set of requirements installed into its own virtualenv."""

    name: str
    version: str
    requirements: tuple[str, ...]
    #: rough size, shown to the user before a build
    size_hint: str = ""

    @property
    def key(self) -> str:
        blob = json.dumps([sys.version_info[:2], sorted(self.requirements)]).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    @property
    def path(self) -> Path:
        py = f"py{sys.version_info[0]}{sys.version_info[1]}"
        return tools_dir() / f"{self.name}-{self.version}-{py}-{self.key}"

    @property
    def python(self) -> Path:
        sub = "Scripts/python.exe" if os.name == "nt" else "bin/python"
        return self.path / sub

    def is_ready(self) -> bool:
        marker = self.path / _MARKER
        if not marker.is_file() or not self.python.exists():
            return False
        try:
            return json.loads(marker.read_text()).get("requirements") == list(self.requirements)
        except (OSError, ValueError):
            return False


#: onnx2tf 1.29.24 is the newest release for Python 3.11 here; it pins tensorflow 2.19 and numpy 1.26
ONNX2TF = ToolEnv(
    name="onnx2tf",
    version="1.29.24",
    requirements=("onnx2tf==1.29.24", "tensorflow==2.19.0"),
    size_hint="about 2.5 GB, a few minutes",
)


#: litert-torch pulls litert-converter -> xdsl 0.28, which pins typing_extensions < 4.13 (apache-tvm-ffi needs
#: newer), so PyTorch -> TFLite runs here when litert-torch is not importable in the SDK's own environment
LITERT_TORCH = ToolEnv(
    name="litert-torch",
    version="0.10.0",
    requirements=("litert-torch==0.10.0", "ai-edge-quantizer==0.10.0", "torch==2.13.0"),
    size_hint="about 3 GB, a few minutes",
)


def tools_dir() -> Path:
    """Root folder of all tool environments."""
    if os.environ.get("EDGEKIT_TOOLS_DIR"):
        return Path(os.environ["EDGEKIT_TOOLS_DIR"]).expanduser()
    from edgekit._fs import user_cache_root

    return user_cache_root() / "tools"


def unavailable_reason(env: ToolEnv = ONNX2TF) -> str | None:
    """None when ``env`` is built or can be built here, else why not."""
    if env.is_ready():
        return None
    try:
        import ensurepip  # noqa: F401
        import venv  # noqa: F401
    except ImportError:
        return (f"the {env.name} tool environment is not built and this Python cannot create virtualenvs "
                f"(install python3-venv)")
    return None


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock file, so two processes never build one environment at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # Windows: best effort, no lock
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_logged(cmd: list[str], log, what: str) -> None:
    """Run ``cmd``, streaming its output to stderr (progress) and to ``log``; raise on failure."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if line.startswith(("Collecting", "Installing", "Successfully", "ERROR", "Downloading")):
            sys.stderr.write(f"  [{what}] {line}")
            sys.stderr.flush()
    if proc.wait() != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)


def ensure(env: ToolEnv = ONNX2TF) -> Path:
    """Return the Python executable of ``env``, building the environment first if needed."""
    if env.is_ready():
        return env.python
    with _lock(env.path.with_name(env.path.name + ".lock")):
        if env.is_ready():  # built by another process while we waited
            return env.python
        if env.path.exists():
            shutil.rmtree(env.path, ignore_errors=True)  # a half-built leftover
        env.path.parent.mkdir(parents=True, exist_ok=True)
        log_path = env.path.with_name(env.path.name + ".build.log")
        sys.stderr.write(f"edgekit: building the {env.name} {env.version} tool environment in {env.path} "
                         f"(one time{', ' + env.size_hint if env.size_hint else ''}; log: {log_path})\n")
        try:
            with open(log_path, "w") as log:
                _run_logged([sys.executable, "-m", "venv", str(env.path)], log, "venv")
                _run_logged([str(env.python), "-m", "pip", "install", "--disable-pip-version-check",
                             "--progress-bar", "off", *env.requirements], log, "pip")
        except (OSError, subprocess.CalledProcessError) as exc:
            shutil.rmtree(env.path, ignore_errors=True)
            tail = ""
            with contextlib.suppress(OSError):
                lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
                tail = " | ".join(lines[-4:])
            raise ToolEnvError(
                f"could not create the {env.name} tool environment at {env.path} "
                f"(requirements: {' '.join(env.requirements)}): {exc}; last output: {tail or '-'}; "
                f"full log: {log_path}. Check network access to the package index, or point EDGEKIT_TOOLS_DIR "
                f"at a prebuilt environment"
            ) from None
        (env.path / _MARKER).write_text(json.dumps({"name": env.name, "version": env.version,
                                                     "requirements": list(env.requirements)}, indent=1))
        sys.stderr.write(f"edgekit: {env.name} tool environment ready\n")
    return env.python


_RUNNING: dict[subprocess.Popen, int] = {}     # tool process -> the thread that runs it
_CANCELLED: set[int] = set()
_RUNNING_LOCK = threading.Lock()


def cancel(thread_id: int) -> None:
    """Kill the tool process thread ``thread_id`` runs and refuse new ones in it (its :func:`run_tool` calls
    return non-zero at once) until :func:`uncancel`: a conversion that failed does not wait for a background
    export nobody will use."""
    with _RUNNING_LOCK:
        _CANCELLED.add(thread_id)
        procs = [p for p, t in _RUNNING.items() if t == thread_id and p.poll() is None]
    for p in procs:
        p.kill()


def uncancel(thread_id: int) -> None:
    with _RUNNING_LOCK:
        _CANCELLED.discard(thread_id)


def run_tool(env: ToolEnv, args: list[str], cwd: Path, timeout: float | None = None,
             on_line=None) -> tuple[int, str]:
    """Run ``python args...`` inside ``env``; return (exit status, combined output). ``on_line`` sees each line."""
    python = ensure(env)
    # the tool's own console scripts (onnx2tf calls `onnxsim`) must come first on PATH
    bindir = str(python.parent)
    child_env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "VIRTUAL_ENV": str(env.path),
                 "PYTHONNOUSERSITE": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    child_env.pop("PYTHONPATH", None)
    me = threading.get_ident()
    with _RUNNING_LOCK:            # checked and registered at once: a cancel() cannot slip in between
        if me in _CANCELLED:
            return -9, "[edgekit] cancelled: the conversion this tool ran for has failed\n"
        proc = subprocess.Popen([str(python), *args], cwd=str(cwd), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, env=child_env)
        _RUNNING[proc] = me
    assert proc.stdout is not None
    out = []
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()

    watchdog = threading.Timer(timeout, expire) if timeout else None
    if watchdog is not None:
        watchdog.daemon = True
        watchdog.start()
    try:
        for line in proc.stdout:       # ends when the child exits or the watchdog kills it
            out.append(line)
            if on_line is not None:
                on_line(line)
        code = proc.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if proc.poll() is None:        # interrupted (Ctrl-C): never leave the tool running
            proc.kill()
            proc.wait()
        with _RUNNING_LOCK:
            _RUNNING.pop(proc, None)
    if timed_out.is_set():
        out.append(f"\n[edgekit] killed after {timeout:.0f} s (timeout)\n")
        code = -9
    return code, "".join(out)
