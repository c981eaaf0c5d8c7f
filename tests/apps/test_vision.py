"""EfficientNet-Lite0 app: real photos get the right ImageNet classes, bad images and budgets get clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.apps import vision
from edgekit.errors import DeadlineError, InputError

skimage_data = pytest.importorskip("skimage.data")

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def test_labels_are_imagenet():
    names = vision.labels()
    assert len(names) == 1000
    assert names[0].startswith("tench") and names[285] == "Egyptian cat" and names[ESPRESSO] == "espresso"


def test_preprocess_shape_and_normalisation():
    x = vision.preprocess(skimage_data.chelsea())
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    white = vision.preprocess(np.full((300, 500, 3), 255, np.uint8))
    np.testing.assert_allclose(white[0, :, 0, 0], (1 - vision.MEAN) / vision.STD, rtol=1e-5)  # (1-mean)/std


def test_chelsea_is_a_cat_and_coffee_is_espresso(classifier):
    cat = classifier.classify_one(skimage_data.chelsea(), top=5)
    assert cat.top[0]["index"] in CAT_CLASSES, cat.top
    assert sum(r["prob"] for r in cat.top if r["index"] in CAT_CLASSES) > 0.5, cat.top  # cat classes dominate
    coffee = classifier.classify_one(skimage_data.coffee(), top=3)
    assert coffee.top[0]["index"] == ESPRESSO and coffee.top[0]["prob"] > 0.5, coffee.top


def test_bundle_matches_onnxruntime_on_the_source(vision_bundle, classifier):
    """The fp32 variant through the facade equals onnxruntime on the same artifact (tolerance 1e-5)."""
    import onnxruntime as ort

    from edgekit.bundle import Bundle

    b = Bundle(vision_bundle)
    art = b.artifact(b.variant("onnx-fp32"))
    x = vision.preprocess(skimage_data.coffee())
    ref = ort.InferenceSession(str(art), providers=["CPUExecutionProvider"]).run(None, {vision.INPUT_NAME: x})[0]
    np.testing.assert_allclose(classifier.logits(x), ref, rtol=1e-5, atol=1e-5)


def test_image_files_and_not_images(tmp_path, classifier):
    from PIL import Image

    p = tmp_path / "cat.png"
    Image.fromarray(skimage_data.chelsea()).save(p)
    assert classifier.classify_one(p, top=1).top[0]["index"] in CAT_CLASSES
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is text, not a JPEG")
    with pytest.raises(InputError, match="not a readable image"):
        vision.load_image(bad)
    with pytest.raises(InputError, match="does not exist"):
        vision.load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="HxW"):
        vision.load_image(np.zeros((4, 4, 7), np.uint8))


def test_budget_runs_and_impossible_budget_errors(vision_bundle):
    clf = vision.Classifier(vision_bundle, budget_ms=10_000)
    pred = clf.classify_one(skimage_data.chelsea(), top=1)
    assert pred.deadline_met is True and pred.variant is not None and pred.top[0]["index"] in CAT_CLASSES
    strict = vision.Classifier(vision_bundle, budget_ms=0.001, strict=True)
    with pytest.raises(DeadlineError, match="predicted"):
        strict.classify_one(skimage_data.chelsea())


def test_flow_limiter_drops_when_behind():
    lim = vision.FlowLimiter()
    for i in range(5):
        lim.offer(i)
    assert lim.take() == 4 and lim.dropped == 4  # the newest frame wins, the others are dropped
    lim.close()
    assert lim.take() is None


def test_stream_reports_processed_and_dropped(tmp_path, classifier):
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    im = skimage_data.chelsea()
    for i in range(12):
        Image.fromarray(np.roll(im, 4 * i, axis=1)).save(frames / f"f{i:03d}.png")
    rep = vision.stream(classifier, frames, fps=200.0)  # 5 ms per frame: faster than the model, so it drops
    assert rep.frames == 12 and rep.processed + rep.dropped == 12
    assert rep.dropped >= 1 and rep.processed >= 1
    assert all(p["label"] for p in rep.predictions) and rep.latency_ms["model_p50"] > 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image frames"):
        vision.list_frames(tmp_path / "empty")
    with pytest.raises(InputError, match="not a folder"):
        vision.list_frames(tmp_path / "missing")


def test_cli_vision(tmp_path, vision_bundle, capsys):
    import json

    from PIL import Image

    from edgekit.cli import main

    p = tmp_path / "coffee.jpg"
    Image.fromarray(skimage_data.coffee()).save(p)
    assert main(["app", "vision", str(p), "--top", "2", "--json", "--bundle", str(vision_bundle)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["predictions"][0]["top"][0]["index"] == ESPRESSO
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG broken")
    assert main(["app", "vision", str(bad), "--bundle", str(vision_bundle)]) == 2
    assert "not a readable image" in capsys.readouterr().err


def test_prepare_never_replaces_a_users_folder(tmp_path):
    from edgekit.errors import OutputExistsError

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not an edgekit bundle"):
        vision.prepare(out=tmp_path, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_bundle_is_validated_on_held_out_views(vision_bundle, tmp_path):
    """Variants are judged, at edgekit's default thresholds, on the fixed views (none used to calibrate) where
    fp32 decides (top-2 logits >= DECIDED_MARGIN apart)."""
    from edgekit.bundle import Bundle

    photos = vision.sample_photos()
    views = vision.fixed_views(photos)
    assert len(views) == 14 * len(photos)
    calib = {v.tobytes() for v in vision.random_views(photos, vision.CALIBRATION_VIEWS, seed=1)}
    assert not any(v.tobytes() in calib for v in views)
    b = Bundle(vision_bundle)
    x = np.concatenate([vision.preprocess(v) for v in views])
    mask = vision.decided(b.artifact(b.variant("onnx-fp32")), x)
    assert 0.5 * len(views) < mask.sum() < len(views)          # most views are decided, the undecided left out
    logits = np.concatenate([b.load("onnx-fp32").run({vision.INPUT_NAME: x[i:i + 1]})[vision.OUTPUT_NAME]
                             for i in range(len(x))])
    top2 = np.sort(logits, -1)[:, -2:]
    assert np.all((top2[:, 1] - top2[:, 0] >= vision.DECIDED_MARGIN) == mask)   # the same rule, recomputed
    assert b.manifest["thresholds"] == {"cosine": 0.99, "top1": 0.98}
    for v in b.variants:
        val = v.validation
        assert val["n_samples"] == int(mask.sum()), v.id
        assert val["passed"] == (val["cosine"] >= 0.99 and val["top1"] >= 0.98), (v.id, val)
