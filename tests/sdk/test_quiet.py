"""edgekit._quiet: native (fd-level) and Python output captured into a log, our own progress kept on the terminal."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from edgekit._quiet import captured, progress_enabled, terminal

import models

_libc = ctypes.CDLL(None)


def _native(tag: str) -> None:
    """Output the way C libraries make it: raw writes to fd 1 and 2, and libc's buffered ``puts``."""
    os.write(1, f"{tag}-fd1\n".encode())
    os.write(2, f"{tag}-fd2\n".encode())
    _libc.puts(f"{tag}-puts".encode())
    print(f"{tag}-print")
    print(f"{tag}-stderr", file=sys.stderr)


_MARKS = ("fd1", "fd2", "puts", "print", "stderr")


def test_native_and_python_output_goes_to_the_log(tmp_path, capfd):
    log = tmp_path / "sub" / "convert.log"
    log.parent.mkdir()
    log.write_text("earlier\n")
    with captured(log):
        _native("cap")
        terminal().write("our progress\n")
    _native("after")  # the terminal is back
    out, err = capfd.readouterr()
    text = log.read_text()
    assert text.startswith("earlier\n")  # appended, not truncated
    for m in _MARKS:
        assert f"cap-{m}" in text and f"cap-{m}" not in out + err
        assert f"after-{m}" in out + err and f"after-{m}" not in text
    assert "our progress" in err and "our progress" not in text


def test_none_discards_and_verbose_passes_through(tmp_path, capfd):
    with captured(None):
        _native("gone")
    out, err = capfd.readouterr()
    assert "gone" not in out + err
    log = tmp_path / "v.log"
    with captured(log, verbose=True):
        _native("shown")
    out, err = capfd.readouterr()
    text = log.read_text()
    for m in _MARKS:
        assert f"shown-{m}" in text and f"shown-{m}" in out + err
    assert "shown-fd1" in out and "shown-fd2" in err  # each stream keeps its own destination
    with captured(None, verbose=True):  # verbose without a log: nothing changes
        _native("plain")
    out, err = capfd.readouterr()
    assert "plain-fd1" in out and "plain-fd2" in err


def test_nested_regions_restore_the_outer_destination(tmp_path, capfd):
    outer, inner = tmp_path / "outer.log", tmp_path / "inner.log"
    with captured(outer):
        _native("o1")
        with captured(inner):
            _native("i")
            terminal().write("still visible\n")
        _native("o2")
    out, err = capfd.readouterr()
    assert all(f"i-{m}" in inner.read_text() and f"i-{m}" not in outer.read_text() for m in _MARKS)
    assert all(f"o{k}-{m}" in outer.read_text() for k in (1, 2) for m in _MARKS)
    assert "still visible" in err and "o1" not in out + err and "i-" not in out + err


def test_another_thread_writes_into_the_active_region(tmp_path, capfd):
    log = tmp_path / "t.log"
    with captured(log):
        t = threading.Thread(target=lambda: [captured(None).__enter__(), os.write(2, b"thread-fd2\n")])
        t.start()
        t.join()
    out, err = capfd.readouterr()
    assert "thread-fd2" in log.read_text() and "thread-fd2" not in err


def test_progress_only_on_a_terminal():
    import io

    assert not progress_enabled(True, io.StringIO())
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            assert progress_enabled(True, tty)
            assert not progress_enabled(False, tty)
    finally:
        os.close(master)
        os.close(slave)


_SCRIPT = textwrap.dedent("""
    import logging, sys, warnings
    from pathlib import Path
    from ai_edge_litert.interpreter import Interpreter
    from edgekit._quiet import captured, terminal

    log, verbose = Path(sys.argv[1]), sys.argv[2] == "1"
    with captured(log, verbose=verbose):
        interp = Interpreter(model_path=sys.argv[3])
        interp.allocate_tensors()
        warnings.warn("a-python-warning")
        logging.getLogger("thirdparty").warning("a-logging-line")
        terminal().write("progress 1/1\\n")
    print("result line")
""")


@pytest.mark.parametrize("verbose", [False, True])
def test_litert_info_line_is_captured_in_a_fresh_process(tmp_path, verbose):
    """LiteRT prints its XNNPACK line once per process, from C++: only a fresh process shows it reliably."""
    pytest.importorskip("ai_edge_litert")
    model = models.tiny_tflite(tmp_path / "tiny.tflite")
    log = tmp_path / "run.log"
    res = subprocess.run([sys.executable, "-c", _SCRIPT, str(log), "1" if verbose else "0", str(model)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = log.read_text()
    for mark in ("XNNPACK delegate", "a-python-warning", "a-logging-line"):
        assert mark in text
        assert (mark in res.stdout + res.stderr) == verbose
    assert "progress 1/1" in res.stderr and "progress 1/1" not in text
    assert res.stdout.strip().endswith("result line")
    assert sorted(Path(tmp_path).iterdir()) == sorted([model, log])  # nothing else written


def test_filtered_drops_known_banners_and_keeps_the_rest(capfd, monkeypatch):
    from edgekit import _quiet

    def noisy() -> None:
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        _libc.puts(b"ERROR: a real problem")
        print("Failed to load _MLModelProxy: No module named 'coremltools.libcoremlpython'", file=sys.stderr)

    with _quiet.filtered() as lines:
        noisy()
    out, err = capfd.readouterr()
    assert "XNNPACK" not in out + err and "_MLModelProxy" not in out + err
    assert "ERROR: a real problem" in out and "ERROR" not in err  # anything else comes through, on its stream
    assert len(lines) == 3 and any("XNNPACK" in x for x in lines)  # all of it, e.g. for an error message
    with pytest.raises(RuntimeError), _quiet.filtered() as lines:
        _libc.puts(b"why it failed")
        raise RuntimeError("x")
    assert lines == ["why it failed"]
    capfd.readouterr()
    monkeypatch.setattr(_quiet, "_verbose", True)  # --verbose: every line
    with _quiet.filtered():
        noisy()
    out, err = capfd.readouterr()
    assert "XNNPACK" in err and "_MLModelProxy" in err and "ERROR: a real problem" in out


def test_verbose_region_does_not_wait_for_a_child_that_outlives_it(tmp_path, capfd):
    """A warm worker started inside a region inherits its pipes: the region ends anyway, the worker's later
    output still reaches the terminal and the log (never a descriptor that was closed and reused)."""
    import time

    log = tmp_path / "w.log"
    t0 = time.monotonic()
    with captured(log, verbose=True):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5); print('late', flush=True)"])
    took = time.monotonic() - t0
    child.wait(timeout=60)
    time.sleep(0.3)
    assert took < 1.4  # at most the 1 s grace for the pipes, not the child's life
    assert "late" in log.read_text() and "late" in capfd.readouterr().out
