"""Op support tables: data plus constraint functions per target."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from edgekit.converters import op_support
from edgekit.converters.op_support import NodeSupport, get_table, reduced_onnxruntime, unsupported_ops
from edgekit.errors import InputError

import models


def _single(op: str, dtype=TensorProto.FLOAT, shape=(1, 3, 8, 8), **attrs):
    n = helper.make_node(op, ["x"], ["y"], **attrs)
    g = helper.make_graph([n], "one", [helper.make_tensor_value_info("x", dtype, list(shape))],
                          [helper.make_tensor_value_info("y", dtype, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_targets_listed_and_unknown_target_named():
    assert {"tflite", "coreml", "onnxruntime", "onnxruntime-reduced"} <= set(op_support.targets())
    with pytest.raises(InputError, match="unknown op-support target 'tensorrt'.*coreml"):
        get_table("tensorrt")


def test_tflite_lacks_erf_at_opset17_but_runs_the_rest_of_bert():
    # the BERT block's Erf has no LiteRT builtin (it becomes FlexErf); every other op is a builtin
    assert set(unsupported_ops(models.bert_block(), "tflite")) == {"Erf"}


def test_coreml_table_comes_from_the_translator():
    mil = pytest.importorskip("edgekit.converters.onnx_to_mil")
    table = get_table("coreml")
    assert table.supported == frozenset(mil.SUPPORTED_OPS)
    assert unsupported_ops(models.bert_block(), "coreml") == {}
    assert set(unsupported_ops(models.cumsum_model(), "coreml")) == {"CumSum"}
    assert set(unsupported_ops(models.cumsum_model(), "tflite")) == {"CumSum"}


def test_constraints_refuse_by_dtype_rank_and_attribute():
    # float64 has no LiteRT builtin kernels
    m = _single("Relu", TensorProto.DOUBLE)
    assert "float64" in NodeSupport.for_model(m, "tflite").reason(m.graph.node[0])
    # rank 6 is past LiteRT's kernels
    m = _single("Relu", shape=(1, 2, 2, 2, 2, 2))
    assert "rank-6" in NodeSupport.for_model(m, "tflite").reason(m.graph.node[0])
    # Resize cubic is not a LiteRT builtin, nearest is
    cubic = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic")
    near = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest")
    info = NodeSupport.for_model(_single("Relu"), "tflite")
    assert "cubic" in info.reason(cubic) and info.reason(near) is None
    # ORT full runs both
    assert NodeSupport.for_model(_single("Relu"), "onnxruntime").reason(cubic) is None


def test_forced_ops_always_fall_back():
    m = _single("Relu")
    sup = NodeSupport.for_model(m, "onnxruntime", forced=["Relu"])
    assert "forced" in sup.reason(m.graph.node[0])


def test_reduced_onnxruntime_from_config_file(tmp_path):
    cfg = tmp_path / "required_operators.config"
    cfg.write_text("# ORT reduced build\nai.onnx;17;Add,MatMul,Relu\nai.onnx;13;Gather\n")
    table = reduced_onnxruntime(cfg, name="ort-tiny")
    assert table.supported == frozenset({"Add", "MatMul", "Relu", "Gather"})
    assert set(unsupported_ops(models.mlp(), "ort-tiny")) == set()
    assert set(unsupported_ops(models.cnn(), "ort-tiny")) == {"Conv", "GlobalAveragePool", "Flatten", "Gemm",
                                                              "Softmax"}
    with pytest.raises(InputError, match="domain;opset"):
        reduced_onnxruntime("ai.onnx;Add")
