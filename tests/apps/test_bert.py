"""MiniLM app: embeddings match the PyTorch reference, semantic answers are right, budgets and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.apps import bert
from edgekit.errors import DeadlineError, InputError


def test_cat_sentence_is_nearer_to_kitten_than_to_markets(embedder):
    e = embedder.embed(["a cat sits on the mat", "a kitten is resting", "stock markets fell"])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)  # L2-normalised
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2, (e[0] @ e[1], e[0] @ e[2])


def test_matches_transformers_reference(embedder):
    """ONNX fp32 through edgekit vs the PyTorch model with mean pooling (tolerance 1e-4 abs)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    texts = ["The quick brown fox jumps over the lazy dog.", "Edge devices run small models."]
    path = str(bert.model_dir())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1).numpy()
    got = embedder.embed(texts)
    assert embedder.last.variant == "onnx-fp32"
    np.testing.assert_allclose(got, ref, atol=1e-4)


def _corpus(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The stock market dropped three percent today.\n\nMy cat loves sleeping in the sun.\n"
                      "A recipe for chocolate cake with cherries.\nThe football match ended in a draw.\n")
    return corpus


def test_search_finds_the_relevant_document(embedder, tmp_path):
    docs = bert.read_corpus(_corpus(tmp_path))
    assert len(docs) == 4  # blank line skipped
    hits = embedder.search("where do kittens like to nap?", docs, top=2)
    assert hits[0]["text"].startswith("My cat") and hits[0]["score"] > hits[1]["score"]


def test_sequence_bucketing_and_budget(embedder):
    long_text = " ".join(["word"] * 100)
    assert bert.bucket_for(embedder.tokenizer.lengths([long_text])[0]) == 128
    embedder = bert.Embedder(embedder.bundle.path, variants=["onnx-fp32", "onnx-int8-dynamic"])  # any length
    embedder.embed([long_text])
    assert embedder.last.seq_len == 128 and embedder.last.truncated == 0
    # a budget that only the shortest bucket fits truncates the text instead of missing
    fast = min(embedder.order, key=lambda v: embedder.controller(v, 1).predict(16))
    ctl = embedder.controller(fast, 1)
    tight = ctl.predict(16) / ctl.safety * 1.01
    if any(embedder.controller(v, 1).fits(32, tight) for v in embedder.order):
        pytest.skip("latency does not grow with sequence length on this machine")
    embedder.embed([long_text], budget_ms=tight)
    assert embedder.last.seq_len == 16 and embedder.last.truncated == 1
    with pytest.raises(DeadlineError, match="impossible"):
        embedder.embed([long_text], budget_ms=0.001)


def test_bad_input(embedder, tmp_path):
    with pytest.raises(InputError, match="empty"):
        embedder.search("query", [])
    with pytest.raises(InputError, match="list of strings"):
        embedder.embed("one string")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="empty"):
        bert.read_corpus(empty)
    with pytest.raises(InputError, match="does not exist"):
        bert.read_corpus(tmp_path / "nope.txt")


def test_cli_similarity_and_search(embedder, tmp_path, capsys):
    import json

    from edgekit.cli import main

    assert main(["app", "bert", "kittens", "--corpus", str(_corpus(tmp_path)), "--top", "1", "--bundle",
                 str(embedder.bundle.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["text"].startswith("My cat")

    assert main(["app", "bert", "--similarity", "a cat sits on the mat", "a kitten is resting", "--json"]) == 0
    near = json.loads(capsys.readouterr().out)["cosine"]
    assert main(["app", "bert", "--similarity", "a cat sits on the mat", "stock markets fell", "--json"]) == 0
    far = json.loads(capsys.readouterr().out)["cosine"]
    assert near > far
    empty = tmp_path / "c.txt"
    empty.write_text("")
    assert main(["app", "bert", "cats", "--corpus", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- TFLite variants
TEXTS = ["a cat sits on the mat", "a kitten is resting", "stock markets fell",
         "Edge devices run small models under a latency budget on a Raspberry Pi.", " ".join(["word"] * 100)]


def _tflite_ids(embedder) -> list[str]:
    ids = [vid for vid, b in embedder.bundle_of.items() if b.variant(vid).format == "tflite"]
    if not ids:
        pytest.skip(f"no TFLite variants in the bundle: {embedder.bundle.manifest.get('tflite')}")
    return ids


def test_bundle_records_validated_tflite_variants(embedder):
    """Two precisions x the static lengths, each with its real validation in LiteRT (cosine >= 0.99 to pass)."""
    ids = _tflite_ids(embedder)
    assert sorted(ids) == sorted(f"tflite-{p}-s{n}" for p in bert.TFLITE_PRECISIONS for n in bert.TFLITE_BUCKETS)
    assert [b.path.name for b in bert.tflite_bundles(embedder.bundle)] == [f"tflite-s{n}" for n in bert.TFLITE_BUCKETS]
    for vid in ids:
        v = embedder.bundle_of[vid].variant(vid)
        assert v.validation["method"] == "runtime" and v.validation["passed"], (vid, v.validation)
        assert v.validation["cosine"] >= 0.99 and v.extra["seq_len"] in bert.TFLITE_BUCKETS
        assert v.inputs[0].shape == (1, v.extra["seq_len"])
    sub = embedder.bundle_of["tflite-fp32-s128"]
    assert sub.variant("tflite-int8-dynamic-s128").size < 0.4 * sub.variant("tflite-fp32-s128").size  # int8 weights
    assert "TFLite variants" in (embedder.bundle.path / "report.md").read_text()


def test_tflite_embeddings_match_onnx_fp32(embedder):
    """LiteRT on real text vs ONNX fp32 at the same length: fp32 to 1e-5 abs (cosine >= 0.99999), int8 cosine
    >= 0.99 per sentence (weights quantized, activations float)."""
    for vid in _tflite_ids(embedder):
        assert embedder.sessions[vid].backend == "litert"
        seq = embedder.seq_len[vid]
        got = embedder.run(vid, TEXTS, seq)
        ref = embedder.run("onnx-fp32", TEXTS, seq)
        cos = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        if "fp32" in vid:
            np.testing.assert_allclose(got, ref, atol=1e-5)
            assert cos.min() >= 0.99999, (vid, cos)
        else:
            assert cos.min() >= 0.99, (vid, cos)


@pytest.mark.parametrize("vid", ["tflite-fp32-s32", "tflite-int8-dynamic-s32", "tflite-int8-dynamic-s128"])
def test_cat_sentence_is_nearer_to_kitten_on_tflite(embedder, vid):
    if vid not in _tflite_ids(embedder):
        pytest.skip(f"{vid} not built")
    emb = bert.Embedder(embedder.bundle.path, variants=[vid])
    e = emb.embed(["a cat sits on the mat", "a kitten is resting", "stock markets fell"])
    assert emb.last.variant == vid and emb.last.seq_len == int(vid.rsplit("-s", 1)[1])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2, (e[0] @ e[1], e[0] @ e[2])


def test_tflite_budget_picks_static_length_and_truncates(embedder):
    """TFLite builds only: the shortest build that holds the whole text; under a budget only the short build
    fits, a long text is truncated to it; an impossible budget is refused."""
    ids = _tflite_ids(embedder)
    emb = bert.Embedder(embedder.bundle.path, variants=ids)
    assert emb.order[:2] == ["tflite-fp32-s32", "tflite-fp32-s128"]  # fp32 first, the short build first
    long_text = " ".join(["word"] * 100)
    emb.embed(["a short one"])
    assert (emb.last.variant, emb.last.seq_len) == ("tflite-fp32-s32", 32)
    emb.embed([long_text])
    assert (emb.last.variant, emb.last.seq_len, emb.last.truncated) == ("tflite-fp32-s128", 128, 0)
    short = [v for v in emb.order if emb.seq_len[v] == 32]
    ctl = {v: emb.controller(v, 1) for v in emb.order}
    tight = max(ctl[v].predict(32) for v in short) / ctl[short[0]].safety * 1.01
    if any(ctl[v].fits(128, tight) for v in emb.order if emb.seq_len[v] == 128):
        pytest.skip("the 128-token builds are not slower than the 32-token ones on this machine")
    emb.embed([long_text], budget_ms=tight)
    assert emb.last.seq_len == 32 and emb.last.truncated == 1 and emb.last.variant in short
    with pytest.raises(DeadlineError, match="impossible"):
        emb.embed([long_text], budget_ms=0.001)
    with pytest.raises(InputError, match="unknown variant"):
        bert.Embedder(embedder.bundle.path, variants=["tflite-fp64"])


def test_tflite_skipped_cleanly_when_unavailable(app_cache, monkeypatch, tmp_path):
    """Without the TFLite tools the bundle still gets its ONNX variants and says why TFLite is missing."""
    pytest.importorskip("torch")
    monkeypatch.setattr(bert, "tflite_unavailable_reason", lambda: "litert_torch not installed (test)")
    from edgekit.bundle import Bundle

    b = Bundle(bert.prepare(tmp_path / "b", progress=False))
    assert {v.format for v in b.variants} == {"onnx"}
    assert b.manifest["tflite"] == {"bundles": [],
                                    "notes": ["TFLite variants skipped: litert_torch not installed (test)"]}
    assert "litert_torch not installed" in (b.path / "report.md").read_text()


def test_facade_on_the_bundle_and_its_tflite_bundles(embedder):
    """Each bundle keeps one input contract: the top one (ONNX, any batch/length) still loads ONNX fp32 by default
    and takes [2, N] int64 ids; a nested TFLite bundle runs in LiteRT under a budget on [1, 32] int32 ids.
    Tolerance: 1e-5 abs for fp32 LiteRT vs ONNX fp32, cosine >= 0.99 for whichever variant the budget ran."""
    import edgekit

    _tflite_ids(embedder)
    feeds = embedder.tokenizer(["a cat sits on the mat", "a kitten is resting"], 32)
    top = edgekit.load(embedder.bundle.path)
    assert top.variant == "onnx-fp32"
    ref = top.run(feeds)[bert.OUTPUT]
    one = {k: v[:1].astype(np.int32) for k, v in feeds.items()}
    sub = edgekit.load(embedder.bundle.path / "tflite-s32")
    assert sub.backend == "litert" and sub.variant == "tflite-fp32-s32"
    np.testing.assert_allclose(sub.run(one)[bert.OUTPUT], ref[:1], atol=1e-5)
    with edgekit.load(embedder.bundle.path / "tflite-s32", budget_ms=10_000) as budgeted:
        got = budgeted.run(one)[bert.OUTPUT]
        assert budgeted.last_run["variant"] in ("tflite-fp32-s32", "tflite-int8-dynamic-s32")
    assert float(got[0] @ ref[0]) >= 0.99
