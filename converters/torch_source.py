"""PyTorch source: an ``nn.Module`` and example inputs exported to ONNX with the TorchScript exporter."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgekit._extras import require
from edgekit.errors import ConversionError, InputError, UnsupportedOpError

DEFAULT_OPSET = 17


def is_torch_module(obj: Any) -> bool:
    """True for a torch.nn.Module, without importing torch when it is not loaded."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def export_torch(module: Any, example_inputs: Any, path: Path, opset: int | None = None,
                 input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None) -> Path:
    """Export ``module`` called on ``example_inputs`` (a tensor, a tuple, or a dict by argument name)."""
    torch = require("torch", "torch", "converting a PyTorch module")
    args, names = example_args(module, example_inputs, input_names)
    module = module.eval()
    with torch.no_grad():
        out = module(*args)
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    outs = list(output_names or (["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]))
    import warnings

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)    # the TorchScript exporter is what we want
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset or DEFAULT_OPSET,
                              input_names=names, output_names=outs, do_constant_folding=True)
    except Exception as exc:
        msg = " ".join(str(exc).split())
        if "Unsupported" in type(exc).__name__ or "is not supported" in msg or "Unsupported" in msg:
            raise UnsupportedOpError(f"torch.onnx.export cannot convert an operator of {type(module).__name__}: "
                                     f"{msg[:400]}") from None
        raise ConversionError(f"torch.onnx.export of {type(module).__name__} failed: {msg[:400]}") from None
    return Path(path)


def example_args(module: Any, example_inputs: Any, input_names: Sequence[str] | None = None
                 ) -> tuple[tuple, list[str]]:
    """(positional tensors, input names) of ``example_inputs``: a tensor, a tuple, or a dict by argument name."""
    import torch

    if example_inputs is None:
        raise InputError("a torch.nn.Module source needs example_inputs (a tensor, a tuple of tensors or a dict "
                         "name -> tensor) to trace it")
    if isinstance(example_inputs, Mapping):
        names = list(example_inputs)
        args = tuple(example_inputs.values())
    else:
        args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        names = list(input_names or _arg_names(module, len(args)))
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise InputError(f"example_inputs must be tensors, got {[type(a).__name__ for a in args]}")
    return args, names


def _arg_names(module: Any, n: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return params[:n] if len(params) >= n else [f"input_{i}" for i in range(n)]
