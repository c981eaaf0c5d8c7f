"""Calibration and validation data: a .npz (first axis = samples), a dict of arrays, or a folder of images.

A sample of an input with spec ``[1, 3, 32, 32]`` is ``arr[i:i+1]`` of an array ``[N, 3, 32, 32]``; an input
with a fixed batch ``b > 1`` (``[2, 3]``) takes ``arr[i]`` of ``[N, 2, 3]``, or ``b`` consecutive rows of an array
``[N * b, 3]``: every sample feeds exactly the batch the model takes. Image folders are resized and
normalized with a preprocessing spec (size, mean, std, layout, scale).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import InputError
from edgekit.specs import TensorSpec, random_feeds

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Preprocess:
    """How to turn an image into an input tensor: ``((pixels * scale) - mean) / std`` at ``size``."""

    size: tuple[int, int] | None = None      # (height, width); None: from the input spec
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1.0 / 255.0
    layout: str | None = None                # "NCHW" or "NHWC"; None: guessed from the input spec

    @classmethod
    def parse(cls, text: str | Mapping | None) -> Preprocess:
        """From ``size=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW,scale=0.0039`` or a dict."""
        if text is None or isinstance(text, Preprocess):
            return text or cls()
        items = dict(text) if isinstance(text, Mapping) else {}
        if isinstance(text, str):
            for part in filter(None, text.split(",")):
                if "=" not in part:
                    raise InputError(f"preprocess spec: expected KEY=VALUE, got {part!r} (keys: size, mean, std, "
                                     "scale, layout)")
                k, v = part.split("=", 1)
                items[k.strip()] = v.strip()
        pre = cls()
        for k, v in items.items():
            try:
                if k == "size":
                    vals = [int(x) for x in (str(v).replace("x", "/").split("/") if isinstance(v, str) else
                                             (v if isinstance(v, Sequence) else [v]))]
                    pre.size = (vals[0], vals[-1])
                elif k in ("mean", "std"):
                    vals = [float(x) for x in (v.split("/") if isinstance(v, str) else
                                               (v if isinstance(v, Sequence) else [v]))]
                    setattr(pre, k, tuple(vals))
                elif k == "scale":
                    pre.scale = float(v)
                elif k == "layout":
                    if str(v).upper() not in ("NCHW", "NHWC"):
                        raise ValueError("layout must be NCHW or NHWC")
                    pre.layout = str(v).upper()
                else:
                    raise ValueError("unknown key")
            except (ValueError, IndexError) as exc:
                raise InputError(f"preprocess spec: bad {k}={v!r} ({exc})") from None
        return pre


def load_calibration(data, inputs: Sequence[TensorSpec], preprocess=None,
                     flag: str = "--calibration") -> dict[str, np.ndarray]:
    """``data`` (.npz path, image folder, or dict name -> [N, ...]) checked against ``inputs``.

    ``flag`` names the option in error messages (``--calibration`` or ``--validation``: both take this format).
    """
    if isinstance(data, Mapping):
        arrays = {k: np.asarray(v) for k, v in data.items()}
        where = f"{flag.lstrip('-')} dict"
    else:
        p = Path(data)
        where = str(p)
        if p.is_dir():
            return _from_images(p, inputs, Preprocess.parse(preprocess), flag)
        if not p.is_file():
            raise InputError(f"{flag} {p}: no such file or folder (expected a .npz or a folder of images)")
        try:
            z = np.load(p, allow_pickle=False)      # a .npz archive, or the one array of a .npy file
            if hasattr(z, "files"):
                with z:
                    arrays = {k: z[k] for k in z.files}
            else:
                arrays = {inputs[0].name: np.asarray(z)}
        except (OSError, ValueError) as exc:
            raise InputError(f"{flag} {p}: cannot read as .npz ({exc})") from None
    return check_samples(arrays, inputs, where)


def check_samples(arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec], where: str) -> dict:
    """Check names, per-sample shapes and dtypes; cast to the input dtypes; same N for every input."""
    names = [s.name for s in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"{where}: no array for input {missing[0]!r}; expected one array per input {names}, "
                         f"given {sorted(arrays)}")
    out: dict[str, np.ndarray] = {}
    counts = set()
    for spec in inputs:
        arr = _batched(np.asarray(arrays[spec.name]), spec, where)
        rank = len(spec.shape)
        if arr.ndim == rank + 1:
            per = arr.shape[1:]
        elif arr.ndim == rank and rank > 0:
            per = (1,) + arr.shape[1:]
        else:
            raise InputError(f"{where}: array {spec.name!r} has shape {arr.shape}; expected [N, ...] with samples "
                             f"of shape {list(spec.shape)}")
        for d_spec, d_got in zip(spec.shape, per):
            if isinstance(d_spec, int) and d_spec >= 0 and d_spec != d_got:
                raise InputError(f"{where}: samples of {spec.name!r} have shape {list(per)}; the input expects "
                                 f"{list(spec.shape)}")
        if arr.dtype != spec.dtype:
            if arr.dtype.kind != np.dtype(spec.dtype).kind and not (arr.dtype.kind in "iu" and
                                                                     np.dtype(spec.dtype).kind in "iu"):
                raise InputError(f"{where}: array {spec.name!r} has dtype {arr.dtype}; the input expects "
                                 f"{np.dtype(spec.dtype).name}")
            arr = arr.astype(spec.dtype)
        out[spec.name] = arr
        counts.add(arr.shape[0])
    if len(counts) != 1:
        raise InputError(f"{where}: every input needs the same number of samples, got {sorted(counts)}")
    if counts == {0}:
        raise InputError(f"{where}: no samples")
    return out


def _batched(arr: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """Rows ``[N * b, ...]`` for an input with a fixed batch ``b > 1`` become samples ``[N, b, ...]`` (each sample
    feeds the model's whole batch); other arrays are returned unchanged."""
    lead = spec.shape[0] if spec.shape else None
    if not (isinstance(lead, int) and lead > 1 and arr.ndim == len(spec.shape)):
        return arr
    if arr.shape[0] % lead:
        raise InputError(f"{where}: array {spec.name!r} has {arr.shape[0]} rows; the input takes a batch of {lead}, "
                         f"so give a multiple of {lead} rows (or [N, {lead}, ...] samples)")
    return arr.reshape((arr.shape[0] // lead, lead) + arr.shape[1:])


def n_samples(calib: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(calib.values())).shape[0])


def samples(calib: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """One feed dict per sample, each of the batch the input takes: ``arr[i]`` of stacked samples
    ``[N, *shape]``, else ``b`` rows of ``[N * b, ...]`` for a fixed leading dim ``b`` (1 row otherwise)."""
    rows = {s.name: 0 if calib[s.name].ndim == len(s.shape) + 1 else _lead(s) for s in inputs}
    n = min((len(calib[s.name]) // rows[s.name] if rows[s.name] else len(calib[s.name]) for s in inputs),
            default=0)
    out = []
    for i in range(n):
        out.append({s.name: np.asarray(calib[s.name][i]) if not rows[s.name] else  # a rank-0 input: 0-d array
                    calib[s.name][i * rows[s.name]:(i + 1) * rows[s.name]] for s in inputs})
    return out


def _lead(spec: TensorSpec) -> int:
    """Rows per sample for a row-form array: the input's fixed leading dim, else 1."""
    lead = spec.shape[0] if spec.shape else None
    return lead if isinstance(lead, int) and lead > 0 else 1


def split(calib: Mapping[str, np.ndarray], holdout: float = 0.25, min_holdout: int = 2):
    """(calibration part, held-out part); with fewer than 4 samples both are everything."""
    n = n_samples(calib)
    if n < 4:
        return dict(calib), dict(calib)
    k = max(min_holdout, int(round(n * holdout)))
    return {a: v[:n - k] for a, v in calib.items()}, {a: v[n - k:] for a, v in calib.items()}


def synthetic(inputs: Sequence[TensorSpec], n: int = 16, seed: int = 1234) -> dict[str, np.ndarray]:
    """Random held-out inputs when the user gives no data: normal floats, small integers (token ids < 100)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {s.name: [] for s in inputs}
    for i in range(n):
        feed = random_feeds(inputs, seed=int(rng.integers(1 << 30)))
        for s in inputs:
            v = feed[s.name]
            if np.dtype(s.dtype).kind in "iu":
                v = np.random.default_rng(seed + i).integers(0, 100, size=v.shape).astype(s.dtype)
            out[s.name].append(v)
    return {k: np.stack(v) for k, v in out.items()}     # [n, *shape]: a static batch > 1 stays one sample


def _from_images(folder: Path, inputs: Sequence[TensorSpec], pre: Preprocess,
                 flag: str = "--calibration") -> dict[str, np.ndarray]:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{flag} {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InputError(f"{flag} {folder}: an image folder needs a model with one 4-D input, "
                         f"the model has {[str(s) for s in inputs]}")
    spec = inputs[0]
    layout = pre.layout or ("NHWC" if spec.shape[-1] in (1, 3) and spec.shape[1] not in (1, 3) else "NCHW")
    hw = (spec.shape[2], spec.shape[3]) if layout == "NCHW" else (spec.shape[1], spec.shape[2])
    size = pre.size or tuple(d if isinstance(d, int) else None for d in hw)
    if None in size:
        raise InputError(f"{flag} {folder}: the input {spec} has dynamic spatial dims; give size= in the "
                         "preprocess spec")
    chans = spec.shape[1] if layout == "NCHW" else spec.shape[3]
    batch = []
    for f in files:
        try:
            img = Image.open(f).convert("L" if chans == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
        except OSError as exc:
            raise InputError(f"{flag} {f}: cannot read image ({exc})") from None
        x = np.asarray(img, np.float32).reshape(size[0], size[1], -1) * pre.scale
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        batch.append(x.transpose(2, 0, 1) if layout == "NCHW" else x)
    return {spec.name: np.stack(batch).astype(spec.dtype)}
