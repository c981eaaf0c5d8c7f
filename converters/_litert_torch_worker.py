"""Runs inside the litert-torch tool environment (converters/toolenv.py): saved PyTorch programs -> .tflite.

``python _litert_torch_worker.py job.json``. The job names ``torch.export`` programs the SDK's environment saved
(same torch version), one per signature, with their example input shapes and dtypes; they become the signatures
of one fp32 ``.tflite`` sharing the weights (litert-torch). ``int8_dynamic`` (optional): also write the
dynamic-range int8 model (ai-edge-quantizer ``dynamic_wi8_afp32``) of that file, or of the existing ``fp32`` file
when no signatures are given. Lines starting with ``EDGEKIT-`` are read by the SDK; the rest is the converters'
own output.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    job = json.loads(open(sys.argv[1]).read())
    print("EDGEKIT-STAGE load", flush=True)
    import litert_torch
    import torch

    conv = None
    for sig in job.get("signatures", []):
        program = torch.export.load(sig["program"]).module()
        for m in program.modules():   # captured in eval mode already; the unlifted module refuses .eval()
            m.training = False
        example = tuple(torch.zeros(shape, dtype=getattr(torch, dtype)) for shape, dtype in sig["inputs"])
        conv = (litert_torch.signature if conv is None else conv.signature)(sig["name"], program, example)
    if conv is not None:             # else: only quantize the given fp32 model
        print("EDGEKIT-STAGE convert", flush=True)
        conv.convert().export(job["fp32"])
    if job.get("int8_dynamic"):
        print("EDGEKIT-STAGE int8-dynamic", flush=True)
        from ai_edge_quantizer import quantizer, recipe

        qt = quantizer.Quantizer(job["fp32"])
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        with open(job["int8_dynamic"], "wb") as f:
            f.write(bytes(qt.quantize().quantized_model))
    print("EDGEKIT-DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
