"""Calibration data: .npz with samples on the first axis, image folders with a preprocessing spec, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgekit.converters import calibration
from edgekit.converters.calibration import Preprocess
from edgekit.errors import InputError
from edgekit.specs import TensorSpec

IMG = [TensorSpec("image", (1, 3, 8, 8), np.dtype(np.float32))]


def test_npz_samples_slice_the_first_axis(tmp_path):
    arr = np.arange(5 * 3 * 8 * 8, dtype=np.float32).reshape(5, 3, 8, 8)
    np.savez(tmp_path / "c.npz", image=arr)
    cal = calibration.load_calibration(tmp_path / "c.npz", IMG)
    feeds = calibration.samples(cal, IMG)
    assert len(feeds) == 5
    np.testing.assert_array_equal(feeds[2]["image"], arr[2:3])      # arr[i:i+1] is one input


def test_unbatched_input_takes_arr_i():
    specs = [TensorSpec("a", (2, 3), np.dtype(np.float32))]
    arr = np.ones((4, 2, 3), np.float32)
    cal = calibration.check_samples({"a": arr}, specs, "x")
    assert calibration.samples(cal, specs)[0]["a"].shape == (2, 3)


def test_dtype_cast_and_errors(tmp_path):
    specs = [TensorSpec("ids", (1, 8), np.dtype(np.int64))]
    cal = calibration.check_samples({"ids": np.zeros((3, 8), np.int32)}, specs, "x")
    assert cal["ids"].dtype == np.int64
    with pytest.raises(InputError, match="no array for input 'image'"):
        calibration.check_samples({"img": np.zeros((2, 3, 8, 8), np.float32)}, IMG, "x")
    with pytest.raises(InputError, match=r"shape \[1, 3, 9, 9\]"):
        calibration.check_samples({"image": np.zeros((2, 3, 9, 9), np.float32)}, IMG, "x")
    with pytest.raises(InputError, match="dtype"):
        calibration.check_samples({"image": np.zeros((2, 3, 8, 8), np.int64)}, IMG, "x")
    with pytest.raises(InputError, match="no such file"):
        calibration.load_calibration(tmp_path / "missing.npz", IMG)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        calibration.load_calibration(tmp_path / "bad.npz", IMG)


def test_image_folder_with_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (12, 10, 3), dtype=np.uint8) for _ in range(3)]
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    pre = Preprocess.parse("mean=0.5/0.5/0.5,std=0.25/0.25/0.25,layout=NCHW")
    cal = calibration.load_calibration(tmp_path, IMG, pre)
    assert cal["image"].shape == (3, 3, 8, 8) and cal["image"].dtype == np.float32
    want = np.asarray(Image.fromarray(pixels[0]).resize((8, 8), Image.BILINEAR), np.float32) / 255.0
    want = ((want - 0.5) / 0.25).transpose(2, 0, 1)
    np.testing.assert_allclose(cal["image"][0], want, atol=1e-5)       # exact same arithmetic as PIL + numpy


def test_image_folder_errors(tmp_path):
    with pytest.raises(InputError, match="no images"):
        calibration.load_calibration(tmp_path, IMG)
    with pytest.raises(InputError, match="layout"):
        Preprocess.parse("layout=CHW")
    with pytest.raises(InputError, match="KEY=VALUE"):
        Preprocess.parse("224")


def test_split_holds_out_samples():
    cal = {"image": np.zeros((20, 3, 8, 8), np.float32)}
    a, b = calibration.split(cal)
    assert a["image"].shape[0] + b["image"].shape[0] == 20 and b["image"].shape[0] == 5
