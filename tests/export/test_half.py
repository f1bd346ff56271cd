"""fp16, bf16 and int4 bundles: fp32 islands where the graph needs them, half KV caches, parity with fp32 within
stated tolerances, greedy BLT-S / BLT-DV identical to AR, and clear errors for what a CPU cannot run."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from fastblt.runtime.backends.ort import OrtBackend
from fastblt.runtime.generator import Generator
from fastblt.runtime.host import encode
from fastblt.runtime.manifest import BundleError, Manifest
from fastblt.runtime.session import Session

pytest.importorskip("onnxruntime")

PROMPTS = ("def add(a, b):\n", "class Point:\n    def ")


@pytest.fixture(scope="module")
def halves(tiny_bundle, tmp_path_factory):
    from fastblt.export.bundle import quantize_bundle

    copy = tmp_path_factory.mktemp("half") / "b"
    shutil.copytree(tiny_bundle, copy)
    quantize_bundle(copy, ("fp16", "bf16", "int4"), log=lambda m: None)
    return copy


def _types(path) -> dict[str, int]:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    values = (*model.graph.input, *model.graph.output, *model.graph.value_info)
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_fp32_islands_and_half_caches(halves):
    manifest = Manifest.load(halves)
    assert manifest.precisions == ("fp32", "fp16", "bf16", "int4")
    f16, bf16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    for precision, half in (("fp16", f16), ("bf16", bf16)):
        for key in ("patcher", "encoder", "global", "decoder_step", "decoder_block_4"):
            path = manifest.graph_file(key, precision)
            graph = onnx.load(str(path)).graph
            types = _types(path)
            for v in (*graph.input, *graph.output):
                cache = v.name.endswith(("_key", "_value"))
                if v.type.tensor_type.elem_type in (f16, bf16, f32):
                    assert v.type.tensor_type.elem_type == (half if cache else f32), (precision, key, v.name)
            for node in graph.node:  # norm statistics, softmax and RoPE's cos/sin computed in fp32
                if node.op_type in ("Softmax", "ReduceMean", "Pow", "Sqrt", "Cos", "Sin"):
                    assert types[node.output[0]] == f32, (precision, key, node.name)
            weights = {t.name for t in graph.initializer if t.data_type == half}
            assert weights, (precision, key)  # the weight MatMuls run in half
            assert any(n.op_type == "MatMul" and types.get(n.output[0]) == half for n in graph.node)
            if "logits" in types:
                assert types["logits"] == f32


def test_fp16_parity_and_greedy_identity(halves):
    """fp16 logits within 2% of their range of fp32 on a real-text call; the session keeps fp16 caches; greedy
    BLT-S and BLT-DV equal AR."""
    ref_backend, backend = OrtBackend(halves, "fp32", layout="standard"), OrtBackend(halves, "fp16")
    ids = encode("def add(a, b):\n    return a + b\n")
    ref = Session(ref_backend).commit(ids)
    session = Session(backend)
    got = session.commit(ids)
    assert session.caches["decoder"].k.dtype == np.float16
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()
    gen = Generator(backend)
    for prompt in PROMPTS:
        ar = gen.generate(prompt, max_new_bytes=24, mode="ar").bytes
        assert gen.generate(prompt, max_new_bytes=24, mode="blts", draft_k=4).bytes == ar
        assert gen.generate(prompt, max_new_bytes=24, mode="bltdv", block_size=4).bytes == ar


def test_int4_blocks_parity_and_greedy_identity(halves):
    manifest = Manifest.load(halves)
    graph = onnx.load(str(manifest.graph_file("decoder_step", "int4")))
    nbits = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all({a.name: a.i for a in n.attribute}["bits"] == 4 for n in nbits)
    assert manifest.quantization["int4"]["decoder_step"]["bits"] == 4
    # no weight is left in fp32 behind a Transpose/Concat of initializers (the fused layout's QKV at scale)
    fused = onnx.load(str(manifest.graph_file("fused_patcher", "int4"))).graph
    inits = {t.name for t in fused.initializer}
    producer = {o: n for n in fused.node for o in n.output}
    for node in fused.node:
        if node.op_type == "MatMul":
            for name in node.input:
                chain = producer.get(name)
                assert chain is None or chain.op_type not in ("Transpose", "Concat") or not all(
                    i in inits or (i in producer and producer[i].op_type == "Concat") for i in chain.input), node.name
    assert np.isfinite(manifest.quality["int4"]["heldout_bpb"])
    ids = encode("class Point:\n    def __init__(self, x, y):\n")
    ref = Session(OrtBackend(halves, "fp32")).commit(ids)
    backend = OrtBackend(halves, "int4")
    assert backend.layout == "fused"  # a CPU precision: the in-place layout
    got = Session(backend).commit(ids)
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()
    gen = Generator(backend)
    for prompt in PROMPTS:
        ar = gen.generate(prompt, max_new_bytes=24, mode="ar").bytes
        assert gen.generate(prompt, max_new_bytes=24, mode="blts", draft_k=4).bytes == ar


def test_bf16_is_checked_widened_and_refused_on_cpu(halves):
    manifest = Manifest.load(halves)
    quality = manifest.quality["bf16"]
    assert quality["heldout_bpb"] is None and "no bf16 kernels" in quality["note"]
    diffs = quality["widened_max_abs_diff_vs_fp32"]
    assert {"encoder", "global", "decoder_step"} <= set(diffs)
    assert all(0 <= d < 0.5 for d in diffs.values())  # rounded weights only: small, and measured
    with pytest.raises(BundleError, match=r"bf16 does not run on ONNX Runtime's CPU provider.*\['fp32', 'fp16', "
                                          r"'int4'\]"):
        OrtBackend(halves, "bf16")
    with pytest.raises(BundleError, match=r"unknown precision 'int3'.*this bundle has"):
        OrtBackend(halves, "int3")


def test_widened_bf16_holds_the_rounded_weights(halves, tmp_path):
    import ml_dtypes

    from fastblt.export.half import widen_bf16

    manifest = Manifest.load(halves)
    path = manifest.graph_file("decoder_step", "bf16")
    half = {t.name for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.BFLOAT16}
    wide = onnx.load(str(widen_bf16(path, tmp_path / "w.onnx")))
    reference = onnx.load(str(manifest.graph_file("decoder_step")))
    fp32 = {t.name: onnx.numpy_helper.to_array(t) for t in reference.graph.initializer}
    checked = 0
    for t in wide.graph.initializer:
        if t.name in half and t.name in fp32 and fp32[t.name].size > 16:
            want = fp32[t.name].astype(ml_dtypes.bfloat16).astype(np.float32)
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), want)
            checked += 1
    assert checked >= 4


def test_torch_bf16_backend(tiny_bltd):
    import copy

    from fastblt.runtime.backends.torch_ref import TorchBackend

    model = copy.deepcopy(tiny_bltd)
    ref = Session(TorchBackend(tiny_bltd)).commit(encode("def f(x):\n"))
    backend = TorchBackend(model, dtype="bfloat16")
    got = Session(backend).commit(encode("def f(x):\n"))
    assert got.dtype == np.float32 and np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    assert 0 < np.abs(got - ref).max()  # it really ran in bf16
    gen = Generator(backend)
    ar = gen.generate(PROMPTS[0], max_new_bytes=16, mode="ar").bytes
    assert gen.generate(PROMPTS[0], max_new_bytes=16, mode="blts", draft_k=4).bytes == ar
    with pytest.raises(ValueError, match=r"dtype 'int8'; valid dtypes are"):
        TorchBackend(tiny_bltd, dtype="int8")


def test_bad_precision_requests(tiny_bundle, tmp_path):
    from fastblt.export.bundle import BuildError, quantize_bundle
    from fastblt.export.half import HalfError, convert_half
    from fastblt.export.quantize import QuantizeError, quantize_graph

    with pytest.raises(BundleError, match=r"no int4 graphs in this bundle \(it has \['fp32'\]\).*--precision int4"):
        OrtBackend(tiny_bundle, "int4")
    with pytest.raises(BuildError, match="each must be one of"):
        quantize_bundle(tiny_bundle, ("fp12",), log=lambda m: None)
    src = Manifest.load(tiny_bundle).graph_file("decoder_step")
    with pytest.raises(HalfError, match=r"not a half precision; half precisions are \['fp16', 'bf16'\]"):
        convert_half(src, tmp_path / "x.onnx", "int4")
    with pytest.raises(QuantizeError, match="quantized precisions are"):
        quantize_graph(src, tmp_path / "x.onnx", "fp12", [])


def test_weight_chains_are_folded_before_weight_only_quantization():
    """At scale the exporter leaves the fused layout's Transpose(Concat(Wq, Wk, Wv)) unfolded; the quantizer folds
    it into one initializer with the same value, so the MatMul is quantized instead of left in fp32."""
    from onnx import TensorProto, helper, numpy_helper

    from fastblt.export.quantize import _weight_matmul_nodes, fold_weight_chains

    rng = np.random.default_rng(0)
    wq, wk = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal((4, 16)).astype(np.float32)
    nodes = [helper.make_node("Concat", ["wq", "wk"], ["w"], axis=0),
             helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 12])],
                              [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(wk, "wk")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert _weight_matmul_nodes(model) == []
    assert fold_weight_chains(model) == 1
    assert _weight_matmul_nodes(model) == ["proj"]
    assert [n.op_type for n in model.graph.node] == ["MatMul"]  # the chain and its inputs are gone
    (folded,) = model.graph.initializer
    np.testing.assert_array_equal(numpy_helper.to_array(folded), np.concatenate([wq, wk]).T)
