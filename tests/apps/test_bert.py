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


def _known_latency(emb, ms_per_token: dict[str, float]) -> None:
    """Give ``emb``'s one-text controllers known latencies (ms per token, linear), so that what the budget
    planner chooses is checked without depending on this machine's load (measuring is tested in tests/sdk)."""
    from edgekit.controller import KnobController

    for vid, per_token in ms_per_token.items():
        ctl = KnobController(bert.BUCKETS, name="seq_len")
        for n in bert.BUCKETS:
            ctl.observe(n, per_token * n)
        emb._ctl[(vid, 1)] = ctl


def test_sequence_bucketing_and_budget(embedder):
    long_text = " ".join(["word"] * 100)
    assert bert.bucket_for(embedder.tokenizer.lengths([long_text])[0]) == 128
    embedder = bert.Embedder(embedder.bundle.path, variants=["onnx-fp32", "onnx-int8-dynamic"])  # any length
    embedder.embed([long_text])
    assert embedder.last.seq_len == 128 and embedder.last.truncated == 0
    # a budget that only the shortest bucket fits truncates the text instead of missing
    _known_latency(embedder, {"onnx-fp32": 0.3, "onnx-int8-dynamic": 0.2})
    ctl = embedder.controller("onnx-int8-dynamic", 1)
    tight = ctl.predict(16) / ctl.safety * 1.01
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
        why = bert.tflite_unavailable_reason()
        # buildable here (litert-torch in this environment or its tool environment) but missing: a real failure
        assert why is not None, f"TFLite variants missing: {embedder.bundle.manifest.get('tflite')}"
        pytest.skip(f"no TFLite variants in the bundle: {why}")
    return ids


def test_bundle_records_validated_tflite_variants(embedder):
    """fp32 and int8 LiteRT files, each with one signature per length, validated in LiteRT (cosine >= 0.99)."""
    ids = _tflite_ids(embedder)
    assert [b.path.name for b in bert.tflite_bundles(embedder.bundle)] == ["tflite"]
    assert sorted(ids) == sorted(f"tflite-{p}" for p in bert.TFLITE_PRECISIONS)
    sub = embedder.bundle_of[ids[0]]
    for vid in ids:
        v = sub.variant(vid)
        assert v.validation["method"] == "runtime" and v.validation["passed"], (vid, v.validation)
        assert v.validation["cosine"] >= 0.99 and v.extra["seq_lens"] == list(bert.TFLITE_BUCKETS)
        assert min(v.validation["cosine_min_by_seq_len"].values()) >= 0.99, v.validation
        assert v.inputs[0].shape == (1, None) and embedder.lengths(vid) == bert.TFLITE_BUCKETS
    assert sub.variant("tflite-int8-dynamic").size < 0.4 * sub.variant("tflite-fp32").size  # int8 weights
    assert sub.variant("tflite-fp32").size < 1.1 * embedder.bundle.variant("onnx-fp32").size  # weights shared
    assert "TFLite variants" in (embedder.bundle.path / "report.md").read_text()


def test_tflite_embeddings_match_onnx_fp32(embedder):
    """LiteRT on real text vs ONNX fp32 at every length: fp32 to 1e-5 abs (cosine >= 0.99999), int8 cosine
    >= 0.99 per sentence (weights quantized, activations float)."""
    for vid in _tflite_ids(embedder):
        assert embedder.sessions[vid].backend == "litert"
        for seq in embedder.lengths(vid):
            got = embedder.run(vid, TEXTS, seq)
            ref = embedder.run("onnx-fp32", TEXTS, seq)
            cos = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
            if vid == "tflite-fp32":
                np.testing.assert_allclose(got, ref, atol=1e-5)
                assert cos.min() >= 0.99999, (vid, seq, cos)
            else:
                assert cos.min() >= 0.99, (vid, seq, cos)


@pytest.mark.parametrize("vid", ["tflite-fp32", "tflite-int8-dynamic"])
def test_cat_sentence_is_nearer_to_kitten_on_tflite(embedder, vid):
    assert vid in _tflite_ids(embedder), embedder.bundle.manifest.get("tflite")   # both precisions or none
    emb = bert.Embedder(embedder.bundle.path, variants=[vid])
    e = emb.embed(["a cat sits on the mat", "a kitten is resting", "stock markets fell"])
    assert (emb.last.variant, emb.last.seq_len) == (vid, 16)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2, (e[0] @ e[1], e[0] @ e[2])


def test_tflite_budget_picks_length_and_variant(embedder):
    """TFLite builds only: the whole text at its bucket; under a budget that only the shortest length fits, a
    long text is truncated to it; an impossible budget is refused; a length with no signature is an error."""
    ids = _tflite_ids(embedder)
    emb = bert.Embedder(embedder.bundle.path, variants=ids)
    assert emb.order == ["tflite-fp32", "tflite-int8-dynamic"]  # most accurate first
    long_text = " ".join(["word"] * 100)
    emb.embed(["a short one"])
    assert (emb.last.variant, emb.last.seq_len) == ("tflite-fp32", 16)
    emb.embed([long_text])
    assert (emb.last.variant, emb.last.seq_len, emb.last.truncated) == ("tflite-fp32", 128, 0)
    _known_latency(emb, {"tflite-fp32": 0.3, "tflite-int8-dynamic": 0.2})
    ctl = {v: emb.controller(v, 1) for v in emb.order}
    tight = max(c.predict(16) for c in ctl.values()) / ctl[ids[0]].safety * 1.01
    emb.embed([long_text], budget_ms=tight)
    assert emb.last.seq_len == 16 and emb.last.truncated == 1
    with pytest.raises(DeadlineError, match="impossible"):
        emb.embed([long_text], budget_ms=0.001)
    with pytest.raises(InputError, match="unknown variant"):
        bert.Embedder(embedder.bundle.path, variants=["tflite-fp64"])
    with pytest.raises(InputError, match="fixed input shapes"):
        emb.sessions["tflite-fp32"].run({n: np.ones((1, 20), np.int32) for n in bert.INPUTS})


def test_mixed_budget_prefers_accuracy_then_speed(embedder):
    """All variants: no budget -> ONNX fp32 (most accurate, any batch); a budget below ONNX fp32's predicted
    time for the whole text moves to a faster variant at full length before truncating."""
    _tflite_ids(embedder)
    embedder = bert.Embedder(embedder.bundle.path)      # its own controllers: the shared fixture's stay measured
    long_text = " ".join(["word"] * 100)
    embedder.embed([long_text])
    assert (embedder.last.variant, embedder.last.seq_len) == ("onnx-fp32", 128)
    _known_latency(embedder, {v: 0.4 if v == "onnx-fp32" else 0.2 for v in embedder.order})
    pred = {v: embedder.controller(v, 1).predict(128) for v in embedder.order}
    fastest = min(pred, key=pred.get)
    budget = pred[fastest] / embedder.controller(fastest, 1).safety * 1.05
    embedder.embed([long_text], budget_ms=budget)
    assert embedder.last.seq_len == 128 and embedder.last.truncated == 0 and embedder.last.variant != "onnx-fp32"


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


def test_facade_on_the_bundle_and_its_tflite_bundle(embedder):
    """Each bundle keeps one input contract: the top one (ONNX, any batch/length) still loads ONNX fp32 by default
    and takes [2, N] int64 ids; the nested TFLite bundle runs in LiteRT on [1, N] int32 ids at each length.
    Tolerance: 1e-5 abs for fp32 LiteRT vs ONNX fp32."""
    import edgekit

    _tflite_ids(embedder)
    top = edgekit.load(embedder.bundle.path)
    assert top.variant == "onnx-fp32"
    sub = edgekit.load(embedder.bundle.path / "tflite")
    assert sub.backend == "litert" and sub.variant == "tflite-fp32"
    assert [s.shape for s in sub.inputs] == [(1, None), (1, None)]
    for seq in (32, 128):
        feeds = embedder.tokenizer(["a cat sits on the mat", "a kitten is resting"], seq)
        ref = top.run(feeds)[bert.OUTPUT]
        got = sub.run({k: v[1:].astype(np.int32) for k, v in feeds.items()})[bert.OUTPUT]
        np.testing.assert_allclose(got, ref[1:], atol=1e-5)


def test_budget_on_the_tflite_bundle(embedder):
    """A budgeted session on the nested TFLite bundle times each variant at its largest signature (a shape it
    accepts) and runs any signature's shape; tolerance 1e-5 abs for fp32 LiteRT vs ONNX fp32."""
    import edgekit

    _tflite_ids(embedder)
    sess = edgekit.load(embedder.bundle.path / "tflite", budget_ms=10_000, profile="measure")
    feeds = embedder.tokenizer(["a cat sits on the mat"], 32)
    got = sess.run({k: v.astype(np.int32) for k, v in feeds.items()})[bert.OUTPUT]
    assert sess.last_run["deadline_met"] and sess.last_run["variant"].startswith("tflite-")
    ref = edgekit.load(embedder.bundle.path, variant="onnx-fp32").run(feeds)[bert.OUTPUT]
    if sess.last_run["variant"] == "tflite-fp32":
        np.testing.assert_allclose(got, ref, atol=1e-5)
    else:
        assert float(got[0] @ ref[0]) >= 0.99          # int8-dynamic: cosine of unit embeddings
