"""Input shapes of a conversion: ``--input-shape`` parsing, the shapes the data fixes, and static-shape copies.

Formats whose converters need static dims (TFLite, Core ML, TVM kernels) are built from a copy of the source
whose dynamic input dims are fixed, from ``--input-shape`` where given, else from the validation data; ONNX
variants keep the source's dynamic dims.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import onnx

from edgekit.errors import ConversionError, InputError
from edgekit.specs import TensorSpec

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]


def parse_input_shapes(items: Mapping[str, Sequence[int]] | Iterable[str] | str | None) -> Shapes:
    """``{"images": (1, 3, 320, 320)}`` from a mapping or from ``NAME=1,3,320,320`` strings (repeatable flag)."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        pairs = [_split_shape_arg(s) for s in ([items] if isinstance(items, str) else items)]
    out: Shapes = {}
    for name, dims in pairs:
        try:
            shape = tuple(int(d) for d in dims)
        except (TypeError, ValueError):
            raise InputError(f"--input-shape {name}: dims must be integers, got {dims!r}") from None
        if not shape or any(d <= 0 for d in shape):
            raise InputError(f"--input-shape {name}: every dim must be a positive integer, got {list(shape)}")
        out[str(name)] = shape
    return out


def _split_shape_arg(text: str) -> tuple[str, list[str]]:
    name, sep, dims = str(text).rpartition("=")
    if not sep or not name.strip() or not dims.strip():
        raise InputError(f"--input-shape {text!r}: expected NAME=D0,D1,... (e.g. images=1,3,320,320)")
    return name.strip(), [d.strip() for d in dims.split(",")]


def check_against_specs(shapes: Shapes, inputs: Sequence[TensorSpec]) -> None:
    """Every named input exists and each given shape agrees with the input's rank and static dims."""
    by_name = {s.name: s for s in inputs}
    for name, shape in shapes.items():
        spec = by_name.get(name)
        if spec is None:
            raise InputError(f"--input-shape {name}: the model has no input {name!r}; inputs: {', '.join(by_name)}")
        if len(shape) != len(spec.shape):
            raise InputError(f"--input-shape {name}: {len(shape)} dims given, the input has {len(spec.shape)} "
                             f"({list(spec.shape)})")
        for d_spec, d in zip(spec.shape, shape):
            if _static(d_spec) and d_spec != d:
                raise InputError(f"--input-shape {name}={','.join(map(str, shape))} disagrees with the input's "
                                 f"static shape {list(spec.shape)}")


def with_shapes(inputs: Sequence[TensorSpec], shapes: Shapes) -> list[TensorSpec]:
    """``inputs`` with the given shapes filled in (for making random data of the right size)."""
    return [replace(s, shape=shapes[s.name]) if s.name in shapes else s for s in inputs]


def dynamic_inputs(inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
    return [s for s in inputs if not all(_static(d) for d in s.shape)]


def shapes_of_feed(feed: Mapping[str, object], inputs: Sequence[TensorSpec]) -> Shapes:
    """The shape of every input in one sample of the data (what a static-shape variant will take)."""
    return {s.name: tuple(int(d) for d in feed[s.name].shape) for s in inputs}   # type: ignore[attr-defined]


def check_data_shapes(given: Shapes, data: Shapes, where: str) -> None:
    """``--input-shape`` and the data must agree: variants are validated on that data."""
    for name, shape in given.items():
        if name in data and tuple(data[name]) != tuple(shape):
            raise InputError(f"--input-shape {name}={','.join(map(str, shape))} but the {where} samples of "
                             f"{name!r} have shape {list(data[name])}: give data of that shape")


def fix_input_shapes(model: onnx.ModelProto, shapes: Shapes) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs take exactly ``shapes``, with shape-dependent subgraphs folded.

    Stale intermediate shapes are dropped and re-inferred; onnxslim (where installed) folds Shape/Gather/Reshape
    chains into constants, which is what converters needing static shapes want.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits or vi.name not in shapes:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(shapes[vi.name]):
            raise ConversionError(f"input {vi.name!r}: cannot fix {len(dims)} dims to {list(shapes[vi.name])}")
        for d, v in zip(dims, shapes[vi.name]):
            d.Clear()
            d.dim_value = int(v)
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    m = _fold(m)
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types; the folded model is still valid
        log.info("shape inference after fixing input shapes failed: %s", exc)
    _restore_output_types(m, model)
    return m


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:
        return model
    try:
        # no MatMul+Add -> Gemm fusion: with the shapes fixed it turns a 3-D MatMul into Reshape-Gemm-Reshape, which
        # onnx2tf converts wrong (PP-OCRv4's recognizer in TFLite: cosine 0.83 against 1.0000 without the fusion)
        slim = onnxslim.slim(model, skip_fusion_patterns=["FusionGemm"])
    except Exception as exc:  # noqa: BLE001 - the unfolded model is still right, only less static
        log.info("onnxslim could not fold the fixed-shape model: %s", exc)
        return model
    same_io = slim is not None and [i.name for i in slim.graph.input] == [i.name for i in model.graph.input
                                                                           if i.name not in
                                                                           {x.name for x in model.graph.initializer}]
    if not same_io or [o.name for o in slim.graph.output] != [o.name for o in model.graph.output]:
        return model
    return slim


def _restore_output_types(model: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Outputs whose element type inference lost get the source's back (shapes stay as inferred)."""
    types = {o.name: o.type.tensor_type.elem_type for o in source.graph.output}
    for o in model.graph.output:
        if not o.type.tensor_type.elem_type and types.get(o.name):
            o.type.tensor_type.elem_type = types[o.name]


def _static(d) -> bool:
    return isinstance(d, int) and d >= 0


class StaticSources:
    """Fixed-shape copies of variant sources, made once per source file and cached in the work folder."""

    def __init__(self, shapes: Shapes, work: Path):
        self.shapes = dict(shapes)
        self.work = work
        self._done: dict[Path, Path] = {}

    def __call__(self, src: Path) -> Path:
        if not self.shapes:
            return src
        if src not in self._done:
            dest = self.work / f"static-{src.stem}.onnx"
            onnx.save(fix_input_shapes(onnx.load(str(src)), self.shapes), str(dest))
            self._done[src] = dest
        return self._done[src]

    def describe(self) -> str:
        return ", ".join(f"{n}=[{','.join(map(str, s))}]" for n, s in self.shapes.items())
