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


def test_preprocess_spec_parsing():
    """Every key, both spellings of size, dicts, and the defaults (scale 1/255, zero mean, unit std)."""
    d = Preprocess.parse(None)
    assert (d.size, d.mean, d.std, d.layout) == (None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), None)
    assert d.scale == pytest.approx(1 / 255)
    assert Preprocess.parse(d) is d
    p = Preprocess.parse(" size = 224x160 , mean=0.5/0.25/0.125,std=2/4/8,scale=0.5,layout=nhwc,")
    assert p.size == (224, 160) and p.mean == (0.5, 0.25, 0.125) and p.std == (2.0, 4.0, 8.0)
    assert p.scale == 0.5 and p.layout == "NHWC"
    assert Preprocess.parse("size=32").size == (32, 32) and Preprocess.parse("size=32/24").size == (32, 24)
    q = Preprocess.parse({"size": [20, 30], "mean": 0.5, "std": [1, 2, 3], "layout": "NCHW"})
    assert q.size == (20, 30) and q.mean == (0.5,) and q.std == (1.0, 2.0, 3.0) and q.layout == "NCHW"
    assert Preprocess.parse({"size": 16}).size == (16, 16)
    for bad, key in (("size=big", "size"), ("mean=a/b", "mean"), ("scale=x", "scale"), ("colour=rgb", "colour")):
        with pytest.raises(InputError, match=rf"preprocess spec: bad {key}="):
            Preprocess.parse(bad)
    with pytest.raises(InputError, match="keys: size, mean, std, scale, layout"):
        Preprocess.parse("size=8,224")


def test_batched_rows_and_samples():
    """A fixed batch of 2: [N*2, 3] rows become [N, 2, 3] samples; an odd row count is refused; stacked
    [N, 2, 3] samples feed arr[i]; a batch-1 input takes arr[i:i+1]."""
    specs = [TensorSpec("a", (2, 3), np.dtype(np.float32))]
    rows = np.arange(24, dtype=np.float32).reshape(8, 3)
    cal = calibration.check_samples({"a": rows}, specs, "x")
    assert cal["a"].shape == (4, 2, 3) and calibration.n_samples(cal) == 4
    feeds = calibration.samples(cal, specs)
    assert len(feeds) == 4
    np.testing.assert_array_equal(feeds[1]["a"], rows[2:4])
    with pytest.raises(InputError, match="has 7 rows; the input takes a batch of 2"):
        calibration.check_samples({"a": rows[:7]}, specs, "x")
    # row form given straight to samples(): b consecutive rows per sample
    feeds = calibration.samples({"a": rows}, specs)
    assert len(feeds) == 4 and feeds[3]["a"].shape == (2, 3)
    np.testing.assert_array_equal(feeds[3]["a"], rows[6:8])
    one = [TensorSpec("b", (1, 3), np.dtype(np.float32))]
    feeds = calibration.samples({"b": rows}, one)
    assert len(feeds) == 8 and feeds[5]["b"].shape == (1, 3)
    np.testing.assert_array_equal(feeds[5]["b"], rows[5:6])
    dyn = [TensorSpec("c", ("N", 3), np.dtype(np.float32))]
    assert len(calibration.samples({"c": rows}, dyn)) == 8


def test_check_samples_counts_ranks_and_casts(tmp_path):
    specs = [TensorSpec("a", (1, 4), np.dtype(np.float32)), TensorSpec("b", (1, 2), np.dtype(np.uint8))]
    cal = calibration.check_samples({"a": np.ones((3, 1, 4)), "b": np.ones((3, 2), np.int64)}, specs, "where")
    u8 = np.ones((3, 2), np.uint8)
    assert cal["a"].dtype == np.float32 and cal["a"].shape == (3, 1, 4)
    assert cal["b"].dtype == np.uint8 and cal["b"].shape == (3, 2)
    with pytest.raises(InputError, match=r"where: every input needs the same number of samples, got \[2, 3\]"):
        calibration.check_samples({"a": np.ones((2, 4)), "b": u8}, specs, "where")
    with pytest.raises(InputError, match="where: no samples"):
        calibration.check_samples({"a": np.ones((0, 4)), "b": u8[:0]}, specs, "where")
    with pytest.raises(InputError, match=r"has shape \(4,\); expected \[N, \.\.\.\]"):
        calibration.check_samples({"a": np.ones(4), "b": u8}, specs, "where")
    with pytest.raises(InputError, match="given \\['x'\\]"):
        calibration.check_samples({"x": np.ones(4)}, specs, "where")
    scalar = [TensorSpec("s", (), np.dtype(np.float32))]
    assert calibration.check_samples({"s": np.ones(5)}, scalar, "w")["s"].shape == (5,)
    with pytest.raises(InputError, match="expected \\[N, ...\\]"):
        calibration.check_samples({"s": np.float32(1)}, scalar, "w")
    # a dict, a .npz and a plain .npy load the same way; the flag names the option in errors
    arr = np.ones((3, 1, 4), np.float32)
    np.save(tmp_path / "one.npy", arr)
    one = [specs[0]]
    for data in ({"a": arr}, tmp_path / "one.npy"):
        np.testing.assert_array_equal(calibration.load_calibration(data, one)["a"], arr)
    with pytest.raises(InputError, match="validation dict: no array"):
        calibration.load_calibration({"z": arr}, one, flag="--validation")
    with pytest.raises(InputError, match="^--validation .*missing"):
        calibration.load_calibration(tmp_path / "missing", one, flag="--validation")


def test_split_and_synthetic():
    few = {"a": np.arange(3)}
    a, b = calibration.split(few)
    np.testing.assert_array_equal(a["a"], few["a"]) and np.testing.assert_array_equal(b["a"], few["a"])
    a, b = calibration.split({"a": np.arange(4)})
    assert list(a["a"]) == [0, 1] and list(b["a"]) == [2, 3]              # at least 2 held out
    a, b = calibration.split({"a": np.arange(10)}, holdout=0.5, min_holdout=1)
    assert list(b["a"]) == [5, 6, 7, 8, 9]
    specs = [TensorSpec("ids", (1, 8), np.dtype(np.int64)), TensorSpec("x", (2, 3), np.dtype(np.float32))]
    s1, s2 = calibration.synthetic(specs, n=5, seed=3), calibration.synthetic(specs, n=5, seed=3)
    assert s1["ids"].shape == (5, 1, 8) and s1["x"].shape == (5, 2, 3) and s1["x"].dtype == np.float32
    assert s1["ids"].dtype == np.int64 and 0 <= s1["ids"].min() and s1["ids"].max() < 100 and s1["ids"].max() > 50
    np.testing.assert_array_equal(s1["x"], s2["x"])                       # deterministic for a seed
    assert not np.array_equal(s1["x"][0], s1["x"][1]) and not np.array_equal(s1["ids"][0], s1["ids"][1])
    assert not np.array_equal(calibration.synthetic(specs, n=2, seed=4)["x"], s1["x"][:2])
    assert calibration.synthetic(specs)["x"].shape[0] == 16 and len(calibration.samples(s1, specs)) == 5


def test_image_folder_layouts_and_grey(tmp_path):
    """NHWC is guessed from a [1, H, W, 3] input, 1-channel inputs read grey images, size= resizes, the default
    scale is 1/255; dynamic spatial dims need size=; a model without one 4-D input cannot take images."""
    rng = np.random.default_rng(1)
    pix = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(pix).save(tmp_path / "a.PNG")
    nhwc = [TensorSpec("img", (1, 4, 4, 3), np.dtype(np.float32))]
    got = calibration.load_calibration(tmp_path, nhwc)["img"]
    want = np.asarray(Image.fromarray(pix).resize((4, 4), Image.BILINEAR), np.float32) / 255.0
    np.testing.assert_allclose(got[0], want, atol=1e-6)
    grey = [TensorSpec("g", (1, 1, 3, 2), np.dtype(np.float32))]
    got = calibration.load_calibration(tmp_path, grey, "scale=1,mean=0,std=1")["g"]
    want = np.asarray(Image.fromarray(pix).convert("L").resize((2, 3), Image.BILINEAR), np.float32)
    assert got.shape == (1, 1, 3, 2)
    np.testing.assert_allclose(got[0, 0], want, atol=1e-4)
    dyn = [TensorSpec("d", (1, 3, "H", "W"), np.dtype(np.float32))]
    with pytest.raises(InputError, match="dynamic spatial dims; give size="):
        calibration.load_calibration(tmp_path, dyn)
    assert calibration.load_calibration(tmp_path, dyn, "size=7x9")["d"].shape == (1, 3, 7, 9)
    nchw = calibration.load_calibration(tmp_path, dyn, "size=7x9,layout=NHWC")["d"]
    assert nchw.shape == (1, 7, 9, 3)
    with pytest.raises(InputError, match="one 4-D input"):
        calibration.load_calibration(tmp_path, [TensorSpec("v", (1, 8), np.dtype(np.float32))])
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read image"):
        calibration.load_calibration(tmp_path, nhwc)


def _message(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    return str(info.value)


def test_error_messages_in_full(tmp_path):
    """The whole message, not a fragment of it: what a user reads."""
    specs = [TensorSpec("a", (1, 4), np.dtype(np.float32))]
    assert _message(lambda: calibration.check_samples({"b": np.ones(2)}, specs, "w")) == (
        "w: no array for input 'a'; expected one array per input ['a'], given ['b']")
    assert _message(lambda: calibration.check_samples({"a": np.ones(4)}, specs, "w")) == (
        "w: array 'a' has shape (4,); expected [N, ...] with samples of shape [1, 4]")
    assert _message(lambda: calibration.check_samples({"a": np.ones((2, 5))}, specs, "w")) == (
        "w: samples of 'a' have shape [1, 5]; the input expects [1, 4]")
    assert _message(lambda: calibration.check_samples({"a": np.ones((2, 4), bool)}, specs, "w")) == (
        "w: array 'a' has dtype bool; the input expects float32")
    two = specs + [TensorSpec("c", (1, 4), np.dtype(np.float32))]
    assert _message(lambda: calibration.check_samples({"a": np.ones((2, 4)), "c": np.ones((3, 4))}, two, "w")) == (
        "w: every input needs the same number of samples, got [2, 3]")
    assert _message(lambda: calibration.check_samples({"a": np.ones((0, 4))}, specs, "w")) == "w: no samples"
    b2 = [TensorSpec("a", (2, 4), np.dtype(np.float32))]
    assert _message(lambda: calibration.check_samples({"a": np.ones((3, 4))}, b2, "w")) == (
        "w: array 'a' has 3 rows; the input takes a batch of 2, so give a multiple of 2 rows (or [N, 2, ...] samples)")
    assert _message(lambda: Preprocess.parse("layout=CHW")) == (
        "preprocess spec: bad layout='CHW' (layout must be NCHW or NHWC)")
    assert _message(lambda: Preprocess.parse("hue=1")) == "preprocess spec: bad hue='1' (unknown key)"
    assert _message(lambda: Preprocess.parse("mean=1=2")).startswith("preprocess spec: bad mean='1=2' (")
    missing = tmp_path / "missing.npz"
    assert _message(lambda: calibration.load_calibration(missing, specs)) == (
        f"--calibration {missing}: no such file or folder (expected a .npz or a folder of images)")
    (tmp_path / "bad.npz").write_bytes(b"junk")
    assert _message(lambda: calibration.load_calibration(tmp_path / "bad.npz", specs)).startswith(
        f"--calibration {tmp_path / 'bad.npz'}: cannot read as .npz (")
    np.savez(tmp_path / "named.npz", z=np.ones((2, 1, 4), np.float32))
    assert _message(lambda: calibration.load_calibration(tmp_path / "named.npz", specs)).startswith(
        f"{tmp_path / 'named.npz'}: no array for input 'a'")


def test_edge_shapes_and_every_image_suffix(tmp_path):
    """A dynamic rank-1 input takes one value per sample; a 0-sized dim is still checked; every listed image
    suffix is read; Preprocess is a dataclass (compares by value)."""
    vec = [TensorSpec("t", ("n",), np.dtype(np.float32))]
    assert calibration.check_samples({"t": np.ones(5)}, vec, "w")["t"].shape == (5,)
    zero = [TensorSpec("z", (1, 0), np.dtype(np.float32))]
    with pytest.raises(InputError, match="the input expects"):
        calibration.check_samples({"z": np.ones((2, 1, 3))}, zero, "w")
    assert Preprocess.parse("size=8") == Preprocess(size=(8, 8))
    suffixes = sorted(calibration.IMAGE_SUFFIXES)
    assert suffixes == [".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"]
    for i, suf in enumerate(suffixes):
        Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8)).save(tmp_path / f"{i}{suf}")
    cal = calibration.load_calibration(tmp_path, IMG, "scale=1")
    assert cal["image"].shape == (8, 3, 8, 8)
    np.testing.assert_allclose(cal["image"][:, 0, 0, 0], [10 * i for i in range(8)], atol=3)    # lossy jpeg/webp
