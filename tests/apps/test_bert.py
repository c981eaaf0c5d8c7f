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
