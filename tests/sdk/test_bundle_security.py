"""Bundle loading checks every manifest path, hash and declared format before anything is opened."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import edgekit
from edgekit import ModelLoadError
from edgekit.bundle import Variant
from edgekit.bundle_writer import BundleWriter

import models


def _bundle(tmp_path, artifact, fmt="onnx", **kw):
    sess = edgekit.load(artifact)
    with BundleWriter(tmp_path / "b") as w:
        w.add_variant("v", fmt, "fp32", artifact, sess.inputs, sess.outputs, validation={"passed": True}, **kw)
    return tmp_path / "b"


def test_a_good_bundle_loads_and_runs(tmp_path, mlp_onnx):
    b = _bundle(tmp_path, mlp_onnx)
    out = edgekit.load(b).run({"x": np.ones((2, 16), np.float32)})["logits"]
    assert out.shape == (2, 10)


@pytest.mark.parametrize("manifest, pattern", [
    ([], "not a JSON object"),
    ({"schema_version": 99, "variants": []}, "unsupported schema_version"),
    ({"schema_version": 1, "variants": [{"id": "v"}]}, "malformed variant"),
    ({"schema_version": 1, "variants": [{"id": "v", "format": "onnx", "path": "../x.onnx", "sha256": "0"}]},
     "leaves the bundle"),
    ({"schema_version": 1, "variants": [{"id": "v", "format": "onnx", "path": ".", "sha256": "0"}]},
     "leaves the bundle"),
    ({"schema_version": 1, "variants": [{"id": "v", "format": "onnx", "path": "m.onnx", "sha256": "0",
                                         "files": [{"sha256": "0"}]}]}, "malformed variant"),
])
def test_malformed_manifests(tmp_path, manifest, pattern):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=pattern):
        edgekit.load(tmp_path / "b")


def test_tampered_artifact_is_refused(tmp_path, mlp_onnx, cnn_onnx):
    b = _bundle(tmp_path, mlp_onnx)
    rel = json.loads((b / "manifest.json").read_text())["variants"][0]["path"]
    shutil.copy(cnn_onnx, b / rel)
    with pytest.raises(ModelLoadError, match="sha256"):
        edgekit.load(b)


def test_declared_format_must_match_the_artifact(tmp_path, tvm_mlp):
    b = _bundle(tmp_path, tvm_mlp, fmt="tvm")
    m = json.loads((b / "manifest.json").read_text())
    m["variants"][0]["format"] = "onnx"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelLoadError, match="declared 'onnx'"):
        edgekit.Bundle(b).load("v", backend="auto")


def test_tvm_library_and_signature_are_both_hashed(tmp_path, tvm_mlp):
    b = _bundle(tmp_path, tvm_mlp.with_suffix(".json"), fmt="tvm")
    v = json.loads((b / "manifest.json").read_text())["variants"][0]
    assert {f["path"].rsplit("/", 1)[-1] for f in v["files"]} == {"mlp.so"}   # the library rides along, hashed
    assert edgekit.load(b).run({"x": np.zeros((3, 16), np.float32)})["logits"].shape == (3, 10)
    # a manifest that leaves the native library unhashed is refused before anything is loaded
    v["files"] = []
    (b / "manifest.json").write_text(json.dumps({**json.loads((b / "manifest.json").read_text()), "variants": [v]}))
    with pytest.raises(ModelLoadError, match="mlp.so is not hashed"):
        edgekit.load(b)


def test_best_prefers_the_variant_taking_more_shapes(tmp_path, mlp_onnx):
    """Two equally accurate fp32 variants of one MLP: a batch-1 export (smaller file) and the dynamic-batch one.
    The default load picks the dynamic one, so a batch of 3 runs; the fixed one still loads by id."""
    import onnx

    fixed = onnx.load(str(mlp_onnx))
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    fixed.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(fixed, str(tmp_path / "fixed.onnx"))
    dyn = onnx.load(str(mlp_onnx))
    dyn.doc_string = "dynamic batch " * 64                  # the bigger file: size alone would pick "fixed"
    onnx.save(dyn, str(tmp_path / "dyn.onnx"))
    with BundleWriter(tmp_path / "b") as w:
        for vid, path in (("fixed", tmp_path / "fixed.onnx"), ("dyn", tmp_path / "dyn.onnx")):
            sess = edgekit.load(path)
            w.add_variant(vid, "onnx", "fp32", path, sess.inputs, sess.outputs,
                          validation={"passed": True, "cosine": 1.0})
    b = edgekit.Bundle(tmp_path / "b")
    assert b.variant("fixed").size < b.variant("dyn").size
    sess = edgekit.load(tmp_path / "b")
    assert sess.variant == "dyn"
    assert sess.run({"x": np.ones((3, 16), np.float32)})["logits"].shape == (3, 10)
    assert edgekit.load(tmp_path / "b", variant="fixed").inputs[0].shape[0] == 1


def _flip_byte(path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(b, **changes) -> dict:
    """Apply ``changes`` to the first variant of bundle ``b`` and write the manifest back."""
    m = json.loads((b / "manifest.json").read_text())
    m["variants"][0].update(changes)
    (b / "manifest.json").write_text(json.dumps(m))
    return m["variants"][0]


def test_flipped_byte_in_a_tvm_library_companion_is_refused(tmp_path, tvm_mlp):
    """The .so is a files[] companion of the TVM variant: its own sha256 check refuses it (the signature, the
    artifact itself, is untouched)."""
    b = _bundle(tmp_path, tvm_mlp.with_suffix(".json"), fmt="tvm")
    so = next(b / f["path"] for f in json.loads((b / "manifest.json").read_text())["variants"][0]["files"])
    _flip_byte(so, so.stat().st_size // 2)
    with pytest.raises(ModelLoadError, match=r"sha256 of \S*mlp\.so does not match"):
        edgekit.load(b)


@pytest.mark.parametrize("bad", ["../outside.so", "v/../../outside.so", "/etc/passwd"])
def test_companion_paths_must_stay_inside(tmp_path, mlp_onnx, bad):
    b = _bundle(tmp_path, mlp_onnx)
    (tmp_path / "outside.so").write_bytes(b"x")
    _edit_manifest(b, files=[{"path": bad, "sha256": "0"}])
    with pytest.raises(ModelLoadError, match="leaves the bundle"):
        edgekit.load(b)


def test_absolute_artifact_path_is_refused(tmp_path, mlp_onnx):
    b = _bundle(tmp_path, mlp_onnx)
    from edgekit._fs import sha256_path

    _edit_manifest(b, path=str(mlp_onnx.resolve()), sha256=sha256_path(mlp_onnx))   # right hash, outside path
    with pytest.raises(ModelLoadError, match="leaves the bundle"):
        edgekit.load(b)


def test_symlinked_artifact_or_companion_pointing_outside_is_refused(tmp_path, tvm_mlp):
    """Same content (the hashes match), but the file lives outside the bundle."""
    b = _bundle(tmp_path, tvm_mlp.with_suffix(".json"), fmt="tvm")
    v = json.loads((b / "manifest.json").read_text())["variants"][0]
    for rel in (v["files"][0]["path"], v["path"]):
        target = b / rel
        outside = tmp_path / f"outside-{target.name}"
        shutil.copy(target, outside)
        target.unlink()
        target.symlink_to(outside)
        with pytest.raises(ModelLoadError, match="leaves the bundle"):
            edgekit.load(b)


def test_missing_artifact_is_refused(tmp_path, mlp_onnx):
    b = _bundle(tmp_path, mlp_onnx)
    (b / json.loads((b / "manifest.json").read_text())["variants"][0]["path"]).unlink()
    with pytest.raises(ModelLoadError, match="is missing"):
        edgekit.load(b, variant="v")


@pytest.fixture(scope="module")
def composite_dir(tmp_path_factory):
    """A composite folder (ONNX Runtime segments + a host TVM kernel for Relu) of a batch-2 MLP."""
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'edgekit-sdk[tvm]')")
    from conftest import reuse_dir

    from edgekit.converters.composite import build_composite

    d, built = reuse_dir("composite", tmp_path_factory)
    if not built:
        src = models.save(models.mlp(batch=2), d / "mlp2.onnx")
        build_composite(src, d / "mlp2", "onnx", fallback_ops=["Relu"], boards=["host"])
        (d / ".built").touch()
    return d / "mlp2"


def _composite_bundle(tmp_path, composite_dir):
    b = _bundle(tmp_path, composite_dir, fmt="composite")
    x = {"x": np.ones((2, 16), np.float32)}
    assert edgekit.load(b).run(x)["logits"].shape == (2, 10)
    return b, b / json.loads((b / "manifest.json").read_text())["variants"][0]["path"]


def test_tampered_file_inside_a_composite_folder_is_refused(tmp_path, composite_dir):
    """A flipped byte in the TVM kernel inside the folder, or an edited plan.json: the folder's hash changes."""
    for victim in ("*.so", "plan.json"):
        b, folder = _composite_bundle(tmp_path / victim.strip("*."), composite_dir)
        f = next(folder.rglob(victim))
        if victim == "plan.json":
            f.write_text(f.read_text().replace('"host"', '"host" ', 1))
        else:
            _flip_byte(f, f.stat().st_size // 2)
        with pytest.raises(ModelLoadError, match="sha256 of .* does not match"):
            edgekit.load(b)


def test_symlink_inside_a_composite_folder_is_refused(tmp_path, composite_dir):
    """A kernel replaced by a symlink to an identical file outside the bundle (the folder's hash still matches):
    a bundle holds regular files only."""
    b, folder = _composite_bundle(tmp_path, composite_dir)
    lib = next(folder.rglob("*.so"))
    outside = tmp_path / "outside.so"
    shutil.copy(lib, outside)
    lib.unlink()
    lib.symlink_to(outside)
    with pytest.raises(ModelLoadError, match="is a symlink"):
        edgekit.load(b)


# --- what the manifest says about variants: records, pass/fail, ranking, the best variant ---------------------

def _v(vid="v", fmt="onnx", precision="fp32", pruning=None, validation=None, size=100, shape=(1, 4)):
    spec = {"name": "x", "shape": list(shape), "dtype": "float32"}
    return Variant.from_json(
        {"id": vid, "format": fmt, "precision": precision, "pruning": pruning, "path": f"{vid}.onnx",
         "sha256": "0" * 64, "size": size, "inputs": [spec], "outputs": [spec], "validation": validation or {}})


def test_variant_record_round_trip_and_defaults():
    d = {"id": "a", "format": "onnx", "path": "a/m.onnx", "sha256": "f" * 64, "board": "rpi4"}
    v = Variant.from_json(d)
    assert (v.precision, v.size, v.pruning, v.files, v.validation, v.inputs) == ("fp32", 0, None, [], {}, [])
    assert v.extra == {"board": "rpi4"}
    full = _v(precision="int8", pruning="2:4", validation={"cosine": 0.5}, size=7)
    back = Variant.from_json(full.to_json())
    assert back == full and full.to_json()["pruning"] == "2:4" and full.extra == {}    # every known key is known
    bare = Variant("b", "onnx", "fp16", "b.onnx", "0", 1, [], [])
    assert (bare.validation, bare.files, bare.extra, bare.pruning) == ({}, [], {}, None) and not bare.passed
    assert bare.to_json()["pruning"] is None and bare.to_json()["files"] == [] and bare.accuracy == 0.0
    assert v.to_json()["board"] == "rpi4" and v.to_json()["precision"] == "fp32"


def test_passed_and_accuracy():
    assert _v().passed and _v().accuracy == 1.0                     # the fp32 source: passed by definition
    assert not _v(precision="fp16").passed and _v(precision="fp16").accuracy == 0.0
    assert not _v(pruning="0.5").passed and _v(pruning="0.5").accuracy == 0.0
    assert not _v(validation={"passed": False}).passed
    assert _v(precision="int8", validation={"passed": True}).passed
    assert _v(validation={"top1": 0.9, "cosine": 0.99}).accuracy == 0.9   # top-1 first, then cosine
    assert _v(validation={"top1": None, "cosine": 0.97}).accuracy == 0.97


def test_rank_key_orders_passed_accuracy_shapes_precision_pruning_size():
    from edgekit.bundle import rank_key

    def order(*vs):
        return [v.id for v in sorted(vs, key=rank_key)]

    ok = {"passed": True, "cosine": 0.99}
    assert order(_v("f", validation={"passed": False, "cosine": 1.0}), _v("p", validation=ok)) == ["p", "f"]
    assert order(_v("lo", validation={"passed": True, "cosine": 0.95}), _v("hi", validation=ok)) == ["hi", "lo"]
    assert order(_v("fix", validation=ok), _v("dyn", validation=ok, shape=("N", 4))) == ["dyn", "fix"]
    assert order(_v("neg", validation=ok, shape=(-1, 4)), _v("fix", validation=ok)) == ["neg", "fix"]
    assert order(_v("x", "onnx", "int4", validation=ok), _v("i8", "onnx", "int8", validation=ok),
                 _v("d", "onnx", "int8-dynamic", validation=ok), _v("h", "onnx", "fp16", validation=ok),
                 _v("f", validation=ok)) == ["f", "h", "d", "i8", "x"]
    assert order(_v("pr", validation=ok, pruning="0.5"), _v("pl", validation=ok)) == ["pl", "pr"]
    assert order(_v("big", validation=ok, size=9), _v("small", validation=ok, size=3)) == ["small", "big"]


def test_best_runnable_table_and_errors(tmp_path, mlp_onnx):
    sess = edgekit.load(mlp_onnx)
    with BundleWriter(tmp_path / "b") as w:
        w.add_variant("bad", "onnx", "int8", mlp_onnx, sess.inputs, sess.outputs,
                      validation={"passed": False, "cosine": 0.5, "top1": 0.25, "max_abs": 3.0, "method": "runtime"})
    b = edgekit.Bundle(tmp_path / "b")
    assert [v.id for v in b.runnable()] == ["bad"] and b.runnable("litert") == []
    with pytest.raises(edgekit.BackendUnavailable, match="no variant passes validation .*bad: failed validation"):
        b.best()
    with pytest.raises(edgekit.BackendUnavailable, match="bad: backend litert cannot run onnx"):
        b.best("litert")
    with pytest.raises(edgekit.InputError, match="no variant 'nope' .*variants: bad"):
        b.variant("nope")
    row, = b.table()
    assert row == {"id": "bad", "format": "onnx", "precision": "int8", "pruning": "", "size": b.variant("bad").size,
                   "cosine": 0.5, "top1": 0.25, "max_abs": 3.0, "passed": False, "check": "runtime",
                   "runs_here": True}
    assert b.load(b.variant("bad")).variant == "bad"                 # by Variant object, even a failed one


def test_manifest_names_are_what_the_session_takes(tmp_path, mlp_onnx):
    """The manifest's input/output names win over the artifact's (a converter may rename tensors)."""
    from edgekit.specs import TensorSpec

    sess = edgekit.load(mlp_onnx)
    ins = [TensorSpec("pixels", s.shape, s.dtype) for s in sess.inputs]
    outs = [TensorSpec("scores", s.shape, s.dtype) for s in sess.outputs]
    with BundleWriter(tmp_path / "b") as w:
        w.add_variant("v", "onnx", "fp32", mlp_onnx, ins, outs, validation={"passed": True})
    s = edgekit.load(tmp_path / "b")
    assert [i.name for i in s.inputs] == ["pixels"] and [o.name for o in s.outputs] == ["scores"]
    x = np.ones((2, 16), np.float32)
    np.testing.assert_array_equal(s.run({"pixels": x})["scores"], sess.run({"x": x})["logits"])


def test_not_a_bundle_and_budgeted_open(tmp_path, mlp_onnx):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a bundle"):
        edgekit.Bundle(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="invalid JSON"):
        edgekit.Bundle(tmp_path / "empty")
    from edgekit.bundle import load_bundle

    b = _bundle(tmp_path, mlp_onnx)
    assert load_bundle(b, variant="v").variant == "v"
    budgeted = load_bundle(b, budget_ms=1000.0)
    assert type(budgeted).__name__ == "BudgetedSession"


def test_a_composite_variant_must_be_its_folder(tmp_path, composite_dir):
    b, folder = _composite_bundle(tmp_path, composite_dir)
    from edgekit._fs import sha256_path

    plan = folder / "plan.json"
    _edit_manifest(b, path=plan.relative_to(b).as_posix(), sha256=sha256_path(plan))
    with pytest.raises(ModelLoadError, match="a composite must be its folder"):
        edgekit.load(b)


def test_error_messages_in_full(tmp_path, mlp_onnx):
    """What a user reads: each refusal names the bundle (or its manifest) first, then the reason, in full."""
    def message(path, variant=None) -> str:
        with pytest.raises((ModelLoadError, edgekit.InputError)) as info:
            edgekit.Bundle(path).load(variant) if variant else edgekit.Bundle(path)
        return str(info.value)

    (tmp_path / "e").mkdir()
    assert message(tmp_path / "e") == f"{tmp_path / 'e'}: not a bundle (no manifest.json)"
    man = tmp_path / "e" / "manifest.json"
    for text, want in (("[]", "the manifest is not a JSON object"),
                       ('{"schema_version": 7}', "unsupported schema_version 7 (expected 1)"),
                       ('{"schema_version": 1, "variants": [{}]}', "malformed variant entry (KeyError('id'))"),
                       ('{"schema_version": 1, "variants": [{"id": "v", "format": "onnx", "path": "m.onnx", "sha256": '
                        '"0", "files": [{"path": "m.so"}]}]}', "malformed variant entry (KeyError('sha256'))")):
        man.write_text(text)
        assert message(tmp_path / "e") == f"{man}: {want}"
    man.write_text("{")
    assert message(tmp_path / "e").startswith(f"{man}: invalid JSON (")
    b = _bundle(tmp_path, mlp_onnx)
    rel = _edit_manifest(b)["path"]
    assert message(b, "nope") == f"no variant 'nope' in {b}; variants: v"
    (b / rel).unlink()
    assert message(b, "v") == f"{b}: variant v: {rel} is missing"
    (b / rel).write_bytes(b"x")
    assert message(b, "v") == f"{b}: variant v: sha256 of {rel} does not match the manifest"
    _edit_manifest(b, path="../x.onnx")
    assert message(b) == f"{b}: manifest path '../x.onnx' leaves the bundle folder"


def test_failed_variants_are_listed(tmp_path, mlp_onnx):
    b = _bundle(tmp_path, mlp_onnx)
    assert edgekit.Bundle(b).failed == []
    m = json.loads((b / "manifest.json").read_text())
    m["failed"] = [{"variant": "onnx-int8", "stage": "export", "error": "ConversionError", "message": "boom"}]
    (b / "manifest.json").write_text(json.dumps(m))
    assert edgekit.Bundle(b).failed == m["failed"]
