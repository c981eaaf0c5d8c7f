"""Core ML runner I/O: a package made by edgekit's exporter shows the source's names and dtypes.

``io_mapping`` (spec -> Session inputs/outputs, feed and output conversion) is pure and is tested here on real
packages written by the exporter; the program in between is run by edgekit's MIL graph check (a numpy walk of
the saved program, not a Core ML run). ``predict`` itself needs macOS: that test is skipped elsewhere.
"""

from __future__ import annotations

import json
import platform

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgekit
from edgekit.errors import BackendUnavailable, InputError, ModelLoadError

import models

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'edgekit-sdk[coreml]')")

from edgekit.converters import get_exporter, mil_eval  # noqa: E402
from edgekit.runtimes import get as get_backend  # noqa: E402
from edgekit.runtimes.coreml import io_mapping, load_spec  # noqa: E402

ON_MAC = platform.system() == "Darwin"


def ids_model() -> onnx.ModelProto:
    """``input_ids:0`` int64[1, 6] -> embedding -> MatMul -> ``hidden/0`` float32, plus ``ids.next`` int64
    (ids + 1): names Core ML cannot keep and int64 on both sides, as in exported BERT graphs."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array(1, np.int64), "one")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids:0"], ["x"]),
             helper.make_node("MatMul", ["x", "W"], ["hidden/0"]),
             helper.make_node("Add", ["input_ids:0", "one"], ["ids.next"])]
    g = helper.make_graph(nodes, "ids", [helper.make_tensor_value_info("input_ids:0", TensorProto.INT64, [1, 6])],
                          [helper.make_tensor_value_info("hidden/0", TensorProto.FLOAT, [1, 6, 4]),
                           helper.make_tensor_value_info("ids.next", TensorProto.INT64, [1, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("coreml_io")
    src = models.save(ids_model(), d / "ids.onnx")
    pkg = get_exporter("coreml").export(src, d / "ids.mlpackage", "fp32")
    return src, pkg


def _ort_io(src):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    dt = {"tensor(int64)": np.int64, "tensor(float)": np.float32}
    return ([(i.name, np.dtype(dt[i.type])) for i in sess.get_inputs()],
            [(o.name, np.dtype(dt[o.type])) for o in sess.get_outputs()])


def test_specs_are_the_sources(exported):
    src, pkg = exported
    io = io_mapping(load_spec(pkg))
    ort_in, ort_out = _ort_io(src)
    assert [(s.name, s.dtype) for s in io.inputs] == ort_in            # input_ids:0 int64
    assert [(s.name, s.dtype) for s in io.outputs] == ort_out          # hidden/0 float32, ids.next int64
    assert [s.shape for s in io.inputs] == [(1, 6)]
    # what Core ML itself holds: sanitized names, int32 where the source had int64
    assert [(s.name, s.dtype.name) for s in io.feature_inputs] == [("input_ids_0", "int32")]
    assert [(s.name, s.dtype.name) for s in io.feature_outputs] == [("hidden_0", "float32"), ("ids_next", "int32")]


def test_feeds_and_outputs_cross_the_mapping(exported):
    """Source feeds -> Core ML feeds -> the saved program (graph check) -> source outputs == onnxruntime."""
    src, pkg = exported
    io = io_mapping(load_spec(pkg))
    ids = np.random.default_rng(1).integers(0, 50, (1, 6)).astype(np.int64)
    feats = io.to_features({"input_ids:0": ids})
    assert list(feats) == ["input_ids_0"] and feats["input_ids_0"].dtype == np.int32
    np.testing.assert_array_equal(feats["input_ids_0"], ids)
    prog, _ = mil_eval.load_program(pkg)
    got = io.from_features(mil_eval.evaluate_program(prog, feats))
    ref = models.ort_reference(src, {"input_ids:0": ids})
    assert sorted(got) == sorted(ref) == ["hidden/0", "ids.next"]
    np.testing.assert_allclose(got["hidden/0"], ref["hidden/0"], rtol=1e-5, atol=1e-5)  # fp32 MIL vs ORT
    assert got["ids.next"].dtype == np.int64                                             # back to the source dtype
    np.testing.assert_array_equal(got["ids.next"], ref["ids.next"])
    assert list(io.from_features(mil_eval.evaluate_program(prog, feats), ["ids.next"])) == ["ids.next"]


def test_bad_feeds_are_input_errors(exported):
    io = io_mapping(load_spec(exported[1]))
    with pytest.raises(InputError, match=r"input 'input_ids:0': values .*2199023255552 do not fit int32"):
        io.to_features({"input_ids:0": np.full((1, 6), 2 ** 41, np.int64)})
    with pytest.raises(InputError, match=r"missing \['input_ids:0'\]; unknown \['input_ids_0'\]"):
        io.to_features({"input_ids_0": np.zeros((1, 6), np.int32)})


def test_inspect_shows_source_and_feature_names(exported):
    info = get_backend("coreml").inspect(exported[1])  # inspect reads the spec on any OS
    assert [i["name"] for i in info["inputs"]] == ["input_ids:0"] and info["inputs"][0]["dtype"] == "int64"
    assert [o["name"] for o in info["features"]["outputs"]] == ["hidden_0", "ids_next"]


def test_package_without_edgekit_metadata_maps_to_itself(exported, tmp_path):
    spec = load_spec(exported[1])
    del spec.description.metadata.userDefined[mil_eval.META_KEY]
    io = io_mapping(spec)
    assert io.inputs == io.feature_inputs and io.outputs == io.feature_outputs


def test_inconsistent_metadata_is_a_load_error(exported):
    spec = load_spec(exported[1])
    meta = json.loads(spec.description.metadata.userDefined[mil_eval.META_KEY])
    meta["narrowed_inputs"] = {"input_ids:0": "int64->int16"}
    spec.description.metadata.userDefined[mil_eval.META_KEY] = json.dumps(meta)
    with pytest.raises(ModelLoadError, match="narrowed to int16, but the feature 'input_ids_0' is int32"):
        io_mapping(spec)


def test_torch_export_records_narrowed_outputs(tmp_path):
    torch = pytest.importorskip("torch")
    from edgekit.converters.export_coreml import export_torch

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(20, 5)

        def forward(self, ids):
            h = self.emb(ids)
            return h.argmax(-1), h * 2

    torch.manual_seed(0)
    net = Tagger().eval()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    pkg = export_torch(net, (ids,), tmp_path / "tagger.mlpackage", input_names=["ids"])
    io = io_mapping(load_spec(pkg))
    assert [(s.name, s.dtype.name) for s in io.inputs] == [("ids", "int64")]
    assert [s.dtype.name for s in io.outputs] == ["int64", "float32"]
    assert [s.dtype.name for s in io.feature_outputs] == ["int32", "float32"]
    prog, _ = mil_eval.load_program(pkg)
    got = io.from_features(mil_eval.evaluate_program(prog, io.to_features({"ids": ids.numpy()})))
    with torch.no_grad():
        ref_tag, ref_h = net(ids)
    tag, h = (got[s.name] for s in io.outputs)
    assert tag.dtype == np.int64
    np.testing.assert_array_equal(tag, ref_tag.numpy())
    np.testing.assert_allclose(h, ref_h.numpy(), rtol=1e-5, atol=1e-5)  # fp32 MIL vs torch


@pytest.mark.skipif(ON_MAC, reason="on macOS the backend is available")
def test_session_needs_macos_and_says_so(exported):
    with pytest.raises(BackendUnavailable, match="Core ML prediction needs macOS"):
        edgekit.load(exported[1], backend="coreml")


@pytest.mark.skipif(not ON_MAC, reason="Core ML predict needs macOS (coremltools has no Core ML runtime on "
                    "Linux); the mapping tests above run the saved program through the graph check instead")
def test_session_on_macos_uses_source_names_and_dtypes(exported):  # pragma: no cover - macOS only
    src, pkg = exported
    sess = edgekit.load(pkg)
    assert [(s.name, s.dtype) for s in sess.inputs] == _ort_io(src)[0]
    ids = np.random.default_rng(2).integers(0, 50, (1, 6)).astype(np.int64)
    got, ref = sess.run({"input_ids:0": ids}), models.ort_reference(src, {"input_ids:0": ids})
    np.testing.assert_allclose(got["hidden/0"], ref["hidden/0"], rtol=1e-3, atol=1e-3)  # Core ML may run fp16
    assert got["ids.next"].dtype == np.int64
    np.testing.assert_array_equal(got["ids.next"], ref["ids.next"])
