"""Raspberry Pi app: classify camera (or folder) frames through edgekit under a latency budget.

Frames come from Picamera2 or OpenCV when present, else from a folder of images. Each frame is resized and
normalized to the model's input, run through ``edgekit.load(...)`` (a bundle given ``--budget-ms`` runs as a
budgeted session that picks variants to meet it), and reported as one JSON line. A tiny HTTP endpoint on
127.0.0.1 serves ``/healthz``, ``/latest`` and ``/stats``. SIGTERM/SIGINT stop the loop cleanly.

    python -m edgekit.apps.piapp --model BUNDLE_OR_MODEL --frames DIR [--budget-ms N] [--http PORT] [--jsonl OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edgekit.errors import EdgekitError, InputError, OutputExistsError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")
#: normalizations of 0..255 RGB pixels: (mean, std) per channel, applied as (x/255 - mean) / std
#: a NORMS name or a (mean, std) pair on [0, 1] pixels
Norm = str | tuple[Sequence[float], Sequence[float]]
NORMS = {
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "signed": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


# ---------------------------------------------------------------- frame sources


class FolderSource:
    """Images of a folder in name order, as RGB uint8 arrays; ``loop=True`` repeats them forever."""

    kind = "folder"

    def __init__(self, folder: str | Path, loop: bool = False):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"--frames: {str(self.folder)!r} is not a folder of images")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise InputError(f"--frames: no images ({', '.join(IMAGE_SUFFIXES)}) in {str(self.folder)!r}")
        self.loop = loop

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        from PIL import Image

        while True:
            for path in self.files:
                try:
                    with Image.open(path) as im:
                        frame = np.asarray(im.convert("RGB"))
                except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
                    raise InputError(f"--frames: {path} is not a readable image ({exc})") from None
                yield path.name, frame
            if not self.loop:
                return

    def close(self) -> None:
        pass


class Picamera2Source:
    """The Raspberry Pi camera through Picamera2 (libcamera), RGB frames of ``size``."""

    kind = "picamera2"

    def __init__(self, size: tuple[int, int] = (640, 480)):
        from picamera2 import Picamera2

        self.cam = Picamera2()
        self.cam.configure(self.cam.create_preview_configuration(main={"format": "RGB888", "size": size}))
        self.cam.start()

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        n = 0
        while True:
            frame = self.cam.capture_array()  # "RGB888" is BGR byte order in memory
            n += 1
            yield f"picamera2:{n}", np.ascontiguousarray(frame[..., 2::-1])

    def close(self) -> None:
        self.cam.stop()
        self.cam.close()


class OpenCVSource:
    """A V4L2/USB camera through OpenCV's VideoCapture."""

    kind = "opencv"

    def __init__(self, index: int = 0):
        import cv2

        self.cv2 = cv2
        self.cap = cv2.VideoCapture(index)
        if not self.cap.isOpened():
            raise InputError(f"OpenCV cannot open camera {index}; give --frames DIR to read images instead")
        self.index = index

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        n = 0
        while True:
            ok, frame = self.cap.read()
            if not ok:
                return
            n += 1
            yield f"opencv{self.index}:{n}", self.cv2.cvtColor(frame, self.cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.cap.release()


def open_source(source: str = "auto", frames: str | Path | None = None, loop: bool = False, camera: int = 0):
    """The frame source: ``folder`` (``frames``), ``picamera2``, ``opencv``, or ``auto`` (folder when given,
    else Picamera2, else OpenCV, each when installed)."""
    import importlib.util

    if source == "folder" or (source == "auto" and frames is not None):
        if frames is None:
            raise InputError("--source folder needs --frames DIR")
        return FolderSource(frames, loop=loop)
    if source in ("picamera2", "auto") and importlib.util.find_spec("picamera2") is not None:
        return Picamera2Source()
    if source in ("opencv", "auto") and importlib.util.find_spec("cv2") is not None:
        return OpenCVSource(camera)
    raise InputError(f"no frame source {source!r} here: Picamera2 and OpenCV are not installed; "
                     "give --frames DIR (a folder of images), or install python3-picamera2 / opencv-python-headless")


def make_frames(folder: str | Path, n: int = 4, size: tuple[int, int] = (40, 30), seed: int = 1) -> Path:
    """Write ``n`` distinct synthetic RGB images (gradients + noise) as ``frameNNN.png`` into ``folder``: frames for
    the folder source without a camera (tests, the QEMU fixtures); ``size`` (w, h) is unlike a model's input, so
    resizing is exercised."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        base = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 60.0 * i)], -1)
        img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"frame{i:03d}.png")
    return folder


# ---------------------------------------------------------------- model input


def input_layout(shape: Sequence) -> tuple[str, int, int]:
    """('NCHW' | 'NHWC', height, width) of an image input shape; dynamic H/W default to 224."""
    if len(shape) != 4:
        raise InputError(f"the model's image input must be 4-D (N,C,H,W or N,H,W,C), got shape {list(shape)}")

    def dim(d, default=224):
        return d if isinstance(d, int) and d > 0 else default

    if shape[1] in (1, 3):
        return "NCHW", dim(shape[2]), dim(shape[3])
    if shape[3] in (1, 3):
        return "NHWC", dim(shape[1]), dim(shape[2])
    raise InputError(f"cannot tell the channel axis of input shape {list(shape)}: expected 1 or 3 channels")


def bundle_norm(path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) a bundle's manifest records for its image input (``edgekit convert --preprocess``), or None."""
    from edgekit.bundle import Bundle

    pre = Bundle(path).manifest.get("preprocess") or {}
    if "mean" not in pre or "std" not in pre:
        return None
    scale = float(pre.get("scale", 1 / 255))
    if abs(scale * 255 - 1) > 1e-6:         # the app scales pixels by 1/255: fold another scale into mean/std
        k = scale * 255
        return tuple(m / k for m in pre["mean"]), tuple(s / k for s in pre["std"])
    return tuple(pre["mean"]), tuple(pre["std"])


def preprocess(rgb: np.ndarray, shape: Sequence, dtype: Any = np.float32, norm: Norm = "unit") -> np.ndarray:
    """An RGB uint8 frame -> one batch of the model input: bilinear resize, normalize, channel layout.

    Float inputs get ``(x/255 - mean) / std`` (``norm``: a name of NORMS or a (mean, std) pair); uint8 inputs the
    raw 0..255 pixels; int8 inputs the pixels
    shifted by -128 (TFLite's int8 image convention), never wrapped around.
    """
    from PIL import Image

    layout, h, w = input_layout(shape)
    channels = shape[1] if layout == "NCHW" else shape[3]
    img = Image.fromarray(rgb).convert("L" if channels == 1 else "RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img)
    if x.ndim == 2:
        x = x[..., None]
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        mean, std = NORMS[norm] if isinstance(norm, str) else norm
        x = (x.astype(np.float32) / 255.0 - np.float32(mean[:channels])) / np.float32(std[:channels])
    elif dtype.kind == "i" and dtype.itemsize == 1:
        x = x.astype(np.int16) - 128
    x = x.astype(dtype)
    if layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])


def top_k(scores: np.ndarray, k: int = 3, labels: Sequence[str] | None = None) -> tuple[list[dict], np.ndarray]:
    """(top-k classes with probabilities, all probabilities); logits are softmaxed, probabilities kept."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not (s.min() >= 0 and abs(s.sum() - 1) < 1e-3):
        e = np.exp(s - s.max())
        s = e / e.sum()
    idx = np.argsort(-s, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i] if labels and i < len(labels) else str(int(i)),
             "score": round(float(s[i]), 6)} for i in idx], s


# ---------------------------------------------------------------- the app


class Stats:
    """Thread-safe counters and the latest result, for the JSON lines and the HTTP endpoint."""

    def __init__(self, budget_ms: float | None, keep: int = 1000):
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.frames = 0
        self.over_budget = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=keep)
        self.latest: dict | None = None
        self.budget_ms = budget_ms

    def add(self, record: dict) -> None:
        with self.lock:
            self.frames += 1
            self.latencies.append(record["latency_ms"])
            self.over_budget += bool(record.get("over_budget"))
            self.latest = record

    def snapshot(self) -> dict:
        with self.lock:
            lat = sorted(self.latencies)
            up = time.monotonic() - self.started

            def pct(q: float) -> float | None:
                return round(lat[min(len(lat) - 1, math.ceil(q * len(lat)) - 1)], 3) if lat else None

            return {"frames": self.frames, "errors": self.errors, "uptime_s": round(up, 3),
                    "fps": round(self.frames / up, 3) if up > 0 else 0.0, "budget_ms": self.budget_ms,
                    "over_budget": self.over_budget,
                    "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                                   "mean": round(sum(lat) / len(lat), 3) if lat else None, "window": len(lat)}}


class PiApp:
    """The classification loop: source -> preprocess -> session -> JSON line (+ stats for HTTP)."""

    def __init__(self, session, source, out: TextIO | None = None, budget_ms: float | None = None, k: int = 3,
                 labels: Sequence[str] | None = None, norm: Norm = "unit", interval_s: float = 0.0,
                 max_frames: int | None = None):
        self.session = session
        self.source = source
        self.out = out
        self.budget_ms = budget_ms
        self.k = k
        self.labels = labels
        self.norm = norm
        self.interval_s = interval_s
        self.max_frames = max_frames
        self.stop_event = threading.Event()
        self.stats = Stats(budget_ms)
        spec = session.inputs[0]
        self.input_name, self.input_shape, self.input_dtype = spec.name, spec.shape, spec.dtype
        input_layout(self.input_shape)  # fail early on a non-image model

    def classify(self, name: str, rgb: np.ndarray, index: int) -> dict:
        x = preprocess(rgb, self.input_shape, self.input_dtype, self.norm)
        t0 = time.perf_counter()
        out = self.session.run({self.input_name: x})
        latency = (time.perf_counter() - t0) * 1e3
        scores = next(iter(out.values()))
        top, _ = top_k(scores[0] if scores.ndim > 1 else scores, self.k, self.labels)
        rec = {"frame": index, "source": name, "time": round(time.time(), 3), "latency_ms": round(latency, 3),
               "top": top}
        last = getattr(self.session, "last_run", None)
        if isinstance(last, dict):  # a budgeted session says which variant ran and whether it met the deadline
            rec["variant"] = last.get("variant")
            rec["over_budget"] = not last.get("deadline_met", True)
        elif self.budget_ms is not None:
            rec["over_budget"] = latency > self.budget_ms
        return rec

    def run(self) -> int:
        """Process frames until the source ends, ``max_frames`` or :meth:`stop`; returns the frame count."""
        n = 0
        try:
            for name, rgb in self.source:
                if self.stop_event.is_set():
                    break
                rec = self.classify(name, rgb, n)
                self.stats.add(rec)
                if self.out is not None:
                    self.out.write(json.dumps(rec) + "\n")
                    self.out.flush()
                n += 1
                if (self.max_frames is not None and n >= self.max_frames) or self.stop_event.wait(self.interval_s):
                    break
        finally:
            self.source.close()
        return n

    def stop(self, *_: Any) -> None:
        self.stop_event.set()


class _Server(ThreadingHTTPServer):
    """socketserver's listen backlog of 5 overflows under a few concurrent clients: a dropped SYN is retried by
    the client's kernel after 1 s, so ~0.25% of requests stalled 1-2 s with 8 local clients."""

    request_queue_size = 128
    daemon_threads = True


def serve(app: PiApp, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the local HTTP endpoint in a daemon thread (``port=0``: any free port; see ``server_port``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            if path == "/healthz":
                body, code = {"ok": not app.stop_event.is_set(), "frames": app.stats.frames}, 200
            elif path == "/latest":
                latest = app.stats.latest
                body, code = (latest, 200) if latest is not None else ({"error": "no frame yet"}, 503)
            elif path == "/stats":
                body, code = dict(app.stats.snapshot(), backend=getattr(app.session, "backend", None)), 200
            else:
                body, code = {"error": f"unknown path {path}; try /healthz, /latest, /stats"}, 404
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # keep stderr for the app's own messages
            pass

    server = _Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="piapp-http", daemon=True).start()
    return server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgekit.apps.piapp", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a bundle folder or a model file (.onnx, .tflite, ...)")
    p.add_argument("--frames", help="folder of images to classify (default: the camera)")
    p.add_argument("--source", choices=("auto", "folder", "picamera2", "opencv"), default="auto")
    p.add_argument("--camera", type=int, default=0, help="OpenCV camera index")
    p.add_argument("--loop", action="store_true", help="repeat the folder's images until stopped")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--interval-ms", type=float, default=0.0, help="pause between frames")
    p.add_argument("--budget-ms", type=float, help="latency budget per frame (bundles choose variants to meet it)")
    p.add_argument("--backend", default="auto", help="runtime to use (edgekit backends lists them)")
    p.add_argument("--threads", type=int, help="runtime threads")
    p.add_argument("--norm", choices=tuple(NORMS), help="pixel normalization of float inputs (default: the "
                   "bundle's recorded preprocessing, else unit)")
    p.add_argument("--labels", help="text file with one class label per line")
    p.add_argument("--top", type=int, default=3, help="classes per result")
    p.add_argument("--http", type=int, metavar="PORT", help="serve /healthz /latest /stats on 127.0.0.1:PORT (0: any)")
    p.add_argument("--jsonl", help="write results here (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --jsonl file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except EdgekitError as exc:
        sys.stderr.write(f"piapp: error: {' '.join(str(exc).split())}\n")
        return exc.exit_code


def _main(args) -> int:
    import edgekit

    opts: dict[str, Any] = {}
    if args.threads:
        opts["threads"] = args.threads
    is_bundle = Path(args.model).is_dir()
    if args.budget_ms is not None and is_bundle:
        opts["budget_ms"] = args.budget_ms
    labels = None
    if args.labels:
        try:
            labels = Path(args.labels).read_text().splitlines()
        except OSError as exc:
            raise InputError(f"--labels: cannot read {args.labels!r} ({exc})") from None
    if args.jsonl and Path(args.jsonl).exists() and not args.force:
        raise OutputExistsError(f"--jsonl {args.jsonl!r} exists; give --force to overwrite it")
    norm = args.norm or (bundle_norm(args.model) if is_bundle else None) or "unit"
    session = edgekit.load(args.model, backend=args.backend, **opts)
    source = out = server = app = None
    try:
        source = open_source(args.source, args.frames, loop=args.loop, camera=args.camera)
        # the app checks the model before anything is written to --jsonl
        app = PiApp(session, source, out=sys.stdout, budget_ms=args.budget_ms, k=args.top, labels=labels,
                    norm=norm, interval_s=args.interval_ms / 1e3, max_frames=args.max_frames)
        if args.jsonl:
            try:
                out = app.out = open(args.jsonl, "w")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise InputError(f"--jsonl: cannot write {args.jsonl!r} ({exc.strerror})") from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, app.stop)
        if args.http is not None:
            server = serve(app, args.http)
            sys.stderr.write(f"piapp: http://127.0.0.1:{server.server_port}/ (healthz, latest, stats)\n")
        sys.stderr.write(f"piapp: {getattr(session, 'backend', '?')} on {source.kind} frames\n")
        sys.stderr.flush()
        n = app.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if out is not None:
            out.close()
        if source is not None and app is None:  # PiApp.run closes its source itself
            source.close()
        session.close()
    snap = app.stats.snapshot()
    sys.stderr.write(f"piapp: stopped after {n} frames, p50 {snap['latency_ms']['p50']} ms, "
                     f"{snap['over_budget']} over budget\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
