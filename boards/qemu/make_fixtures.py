"""Build, on the host, the models, bundles, frames and reference outputs the aarch64 tests check against.

    python boards/qemu/make_fixtures.py OUT_DIR [--force]

OUT_DIR gets: ``cnn.onnx`` and ``mlp.onnx`` (from tests/models.py), ``cnn.tflite`` (edgekit's TFLite exporter, when
installed), ``cnn.bundle`` (an edgekit bundle with the ONNX and TFLite variants), ``frames/`` (images),
``bert.composite/`` (a BERT block as ONNX segments plus TVM kernels for Softmax and Erf, compiled for the host
and cross-compiled for rpi4, when TVM and the aarch64 cross compiler are installed), ``inputs.npz`` and
``ref_*.npz`` (the host's outputs: plain onnxruntime, LiteRT, the composite on its host kernels),
``ref_piapp.jsonl`` (the Pi app's results on the host) and ``fixtures.json`` (what was built, and why something
was not).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


def make_tflite(onnx_path: Path, out: Path) -> str | None:
    """cnn.onnx converted by edgekit's own TFLite exporter (fp32); returns why not, or None when built."""
    from edgekit.converters import get_exporter
    from edgekit.errors import EdgekitError

    exp = get_exporter("tflite")
    why = exp.unavailable_reason()
    if why:
        return f"the TFLite exporter is not usable on the host: {why}"
    try:
        exp.export(onnx_path, out, "fp32")
    except EdgekitError as exc:  # a converter failure is reported in fixtures.json, the ONNX cases still run
        return f"TFLite export failed: {type(exc).__name__}: {exc}"
    return None


def make_composite(onnx_path: Path, out: Path) -> str | None:
    """A composite with TVM kernels for the host and rpi4 (Softmax and Erf forced onto TVM); returns why not,
    or None when built."""
    import importlib.util
    import shutil as sh

    if importlib.util.find_spec("tvm") is None:
        return "apache-tvm is not installed on the host (pip install 'edgekit-sdk[tvm]')"
    if sh.which("aarch64-linux-gnu-g++") is None:
        return "aarch64-linux-gnu-g++ is not installed (apt-get install g++-aarch64-linux-gnu)"
    from edgekit.converters.composite import build_composite

    build_composite(onnx_path, out, "onnx", fallback_ops=["Softmax", "Erf"], boards=["host", "rpi4"])
    return None


def build(out: Path) -> dict:
    import edgekit
    from edgekit.apps import piapp
    from edgekit.bundle_writer import BundleWriter

    import models

    rng = np.random.default_rng(0)
    info: dict = {"built": [], "skipped": {}}
    cnn = models.save(models.cnn(), out / "cnn.onnx")
    mlp = models.save(models.mlp(), out / "mlp.onnx")
    inputs = {"image": rng.random((1, 3, 16, 16), dtype=np.float32),
              "x": rng.standard_normal((3, 16)).astype(np.float32)}
    np.savez(out / "inputs.npz", **inputs)
    np.savez(out / "ref_onnx.npz", **models.ort_reference(cnn, {"image": inputs["image"]}),
             **{"mlp_" + k: v for k, v in models.ort_reference(mlp, {"x": inputs["x"]}).items()})
    info["built"] += ["cnn.onnx", "mlp.onnx"]

    why = make_tflite(cnn, out / "cnn.tflite")
    if why is None:
        with edgekit.load(out / "cnn.tflite", backend="litert") as sess:
            feeds = {sess.inputs[0].name: inputs["image"]}
            np.savez(out / "ref_tflite.npz", **sess.run(feeds))
        info["built"].append("cnn.tflite")
    else:
        info["skipped"]["cnn.tflite"] = why

    with edgekit.load(cnn) as sess:
        ins, outs = sess.inputs, sess.outputs
    with BundleWriter(out / "cnn.bundle", source=cnn, inputs=ins, outputs=outs,
                      meta={"made_by": "boards/qemu/make_fixtures.py"}) as w:
        w.add_variant("onnx-fp32", "onnx", "fp32", cnn, ins, outs, validation={"passed": True, "cosine": 1.0})
    info["built"].append("cnn.bundle")

    bert = models.save(models.bert_block(), out / "bert.onnx")
    why = make_composite(bert, out / "bert.composite")
    if why is None:
        ids = rng.integers(0, 100, (1, 8), dtype=np.int64)
        with edgekit.load(out / "bert.composite", board="host") as sess:
            np.savez(out / "ref_composite.npz", input_ids=ids, **sess.run({"input_ids": ids}))
        info["built"].append("bert.composite")
    else:
        info["skipped"]["bert.composite"] = why

    frames = piapp.make_frames(out / "frames")
    rc = piapp.main(["--model", str(out / "cnn.bundle"), "--frames", str(frames), "--jsonl",
                     str(out / "ref_piapp.jsonl"), "--top", "3"])
    if rc != 0:
        raise SystemExit(f"make_fixtures: the Pi app failed on the host (exit {rc})")
    info["built"] += ["frames", "ref_piapp.jsonl"]
    import onnxruntime

    info["host"] = {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    if "bert.composite" in info["built"]:
        from importlib.metadata import version

        info["host"]["apache-tvm"] = version("apache-tvm")  # the guest's TVM runtime must match
    (out / "fixtures.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    args = ap.parse_args(argv)
    if args.out.exists():
        if not args.force:
            sys.stderr.write(f"make_fixtures: {args.out} exists; give --force to replace it\n")
            return 2
        shutil.rmtree(args.out)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info = build(tmp)
    tmp.rename(args.out)
    sys.stderr.write(f"make_fixtures: {', '.join(info['built'])} in {args.out}"
                     + "".join(f"; skipped {k}: {v}" for k, v in info["skipped"].items()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
