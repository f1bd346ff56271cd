"""TensorRT engine keys, device checks, precision rules and optimization profiles (CPU); engine build/run (GPU)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from fastblt.export.trt_build import (
    DeviceInfo,
    EngineMismatchError,
    PrecisionError,
    build_engine,
    check_engine,
    check_precision,
    device_info,
    engine_key,
    profile_shapes,
    require_device,
)
from fastblt.graphs.config import SUPPORTED_BLOCK_SIZES, tiny_config
from fastblt.graphs.spec import GraphSpec, TensorSpec, dim_ranges, graph_specs

ADA = DeviceInfo("NVIDIA GeForce RTX 4090", "8.9", "10.3.0", False)
ORIN = DeviceInfo("Orin", "8.7", "10.3.0", True)
ONNX_SHA = "ab" * 32
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def _record(info: DeviceInfo = ADA, onnx_sha: str = ONNX_SHA) -> dict:
    return {"graph_key": "encoder", "precision": "fp16", "path": "0123456789abcdef.plan", "sha256": "00" * 32,
            "gpu_name": info.gpu_name, "compute_capability": info.compute_capability,
            "trt_version": info.trt_version, "onnx_sha256": onnx_sha}


def test_engine_key_is_deterministic_and_short():
    key = engine_key(ADA, ONNX_SHA, "fp16")
    assert key == engine_key(DeviceInfo(*dataclasses.astuple(ADA)), ONNX_SHA, "fp16")
    assert len(key) == 16 and int(key, 16) >= 0


@pytest.mark.parametrize(
    ("info", "onnx_sha", "precision"),
    [
        (dataclasses.replace(ADA, gpu_name="NVIDIA RTX 6000 Ada Generation"), ONNX_SHA, "fp16"),
        (dataclasses.replace(ADA, compute_capability="8.6"), ONNX_SHA, "fp16"),
        (dataclasses.replace(ADA, trt_version="10.4.0"), ONNX_SHA, "fp16"),
        (ADA, "cd" * 32, "fp16"),
        (ADA, ONNX_SHA, "int8"),
    ],
    ids=["gpu_name", "compute_capability", "trt_version", "onnx_sha256", "precision"],
)
def test_engine_key_changes_with_each_field(info, onnx_sha, precision):
    assert engine_key(info, onnx_sha, precision) != engine_key(ADA, ONNX_SHA, "fp16")


def test_check_engine_accepts_a_matching_engine():
    check_engine(_record(), ADA, ONNX_SHA)


@pytest.mark.parametrize(
    ("info", "onnx_sha", "label"),
    [
        (dataclasses.replace(ADA, gpu_name="NVIDIA A100-SXM4-80GB"), ONNX_SHA, "GPU name"),
        (dataclasses.replace(ADA, compute_capability="9.0"), ONNX_SHA, "compute capability"),
        (dataclasses.replace(ADA, trt_version="11.0.0"), ONNX_SHA, "TensorRT version"),
        (ADA, "cd" * 32, "ONNX sha256"),
    ],
)
def test_check_engine_names_exactly_what_differs(info, onnx_sha, label):
    with pytest.raises(EngineMismatchError) as err:
        check_engine(_record(), info, onnx_sha)
    message = str(err.value)
    assert f"{label}:" in message
    assert "blt-export engine BUNDLE" in message
    others = {"GPU name", "compute capability", "TensorRT version", "ONNX sha256"} - {label}
    assert not [o for o in others if f"{o}:" in message], message


def test_check_engine_lists_every_difference_and_missing_fields():
    with pytest.raises(EngineMismatchError, match=r"GPU name: .*TensorRT version: .*ONNX sha256: "):
        check_engine({"path": "x.plan", "compute_capability": "8.9"}, ADA, ONNX_SHA)


@pytest.mark.parametrize("cc", ["8.6", "8.7", "7.5"])
def test_fp8_is_refused_below_compute_capability_8_9(cc):
    info = dataclasses.replace(ORIN, compute_capability=cc)
    with pytest.raises(PrecisionError, match=r"fp8 needs compute capability >= 8\.9.*Jetson Orin.*int8"):
        check_precision("fp8", info)


@pytest.mark.parametrize("cc", ["8.9", "9.0", "10.0", "12.0"])
def test_fp8_is_accepted_from_compute_capability_8_9(cc):
    check_precision("fp8", dataclasses.replace(ADA, compute_capability=cc))  # "10.0" compares as a number


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_orin_accepts_int8_fp16_fp32(precision):
    check_precision(precision, ORIN)


def test_unknown_precision_lists_the_valid_ones():
    with pytest.raises(PrecisionError, match=r"'bf16'.*\['fp32', 'fp16', 'int8', 'fp8'\].*FP16 ONNX"):
        check_precision("bf16", ADA)


def test_build_engine_checks_precision_before_touching_tensorrt(tmp_path):
    spec = graph_specs(tiny_config())["encoder"]
    with pytest.raises(PrecisionError, match="Jetson Orin"):
        build_engine(tmp_path / "missing.onnx", spec, dim_ranges(tiny_config()), "fp8", tmp_path, ORIN)


def _cases():
    cfg = tiny_config()
    for name, spec in graph_specs(cfg).items():
        for block in SUPPORTED_BLOCK_SIZES if name == "decoder_block" else (None,):
            yield pytest.param(spec, dim_ranges(cfg, block), block, id=f"{name}-{block}" if block else name)


@pytest.mark.parametrize(("spec", "ranges", "block"), list(_cases()))
def test_profile_shapes_cover_every_input(spec, ranges, block):
    shapes = profile_shapes(spec, ranges)
    assert list(shapes) == list(spec.input_names)
    for ts in spec.inputs:
        low, opt, high = shapes[ts.name]
        assert len(low) == len(opt) == len(high) == len(ts.shape)
        for axis, dim in enumerate(ts.shape):
            assert low[axis] <= opt[axis] <= high[axis], (ts.name, axis)
            if isinstance(dim, int):
                assert low[axis] == opt[axis] == high[axis] == dim
            elif dim == "T":
                assert (low[axis], opt[axis], high[axis]) == ranges[f"T:{spec.stack}"]
            elif dim == "T+B":
                t_low, t_opt, t_high = ranges[f"T:{spec.stack}"]
                assert (low[axis], opt[axis], high[axis]) == (t_low + block, t_opt + block, t_high + block)
            else:
                assert (low[axis], opt[axis], high[axis]) == ranges[dim]
            if dim == "B":
                assert low[axis] == opt[axis] == high[axis] == block


def test_profile_shapes_use_the_graphs_own_cache_length():
    cfg = tiny_config()
    specs, ranges = graph_specs(cfg), dim_ranges(cfg)
    assert profile_shapes(specs["global"], ranges)["past_key"][2][3] == cfg.global_transformer.max_positions - 1
    assert profile_shapes(specs["patcher"], ranges)["past_key"][2][3] == ranges["T:patcher"][2]


def test_decoder_block_without_block_size_is_a_clear_error():
    cfg = tiny_config()
    with pytest.raises(ValueError, match=r"decoder_block needs dim_ranges\(cfg, block_size\)"):
        profile_shapes(graph_specs(cfg)["decoder_block"], dim_ranges(cfg))


def test_trt_build_imports_no_gpu_packages(tmp_path):
    code = ("import sys, fastblt.export.trt_build\n"
            "print(sorted(m for m in ('tensorrt', 'cuda', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_trt_backend_import_without_tensorrt_gives_the_install_hint():
    with pytest.raises(ImportError, match=r"pip install 'fastblt\[trt\]'"):
        importlib.import_module("fastblt.runtime.backends.trt")


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_no_device_without_tensorrt():
    assert device_info() is None
    with pytest.raises(RuntimeError, match=r"NVIDIA CUDA GPU.*fastblt\[trt\]"):
        require_device()


# ---- GPU: real TensorRT builds (skipped on CPU machines) ----------------------------------------------------------

GPU_INFO = device_info()
needs_gpu = pytest.mark.skipif(GPU_INFO is None, reason="needs an NVIDIA CUDA GPU with tensorrt and cuda-python "
                                                        "(device_info() found none)")
TOY = GraphSpec("toy", (TensorSpec("x", "float32", ("b", "T")),), (TensorSpec("y", "float32", ("b", "T")),), "toy")
TOY_RANGES = {"b": (1, 1, 2), "T:toy": (0, 4, 16)}


def _toy_onnx(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "toy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "T"])], [one])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.gpu
@needs_gpu
def test_build_engine_writes_a_keyed_plan_and_timing_cache(tmp_path):
    onnx_path = _toy_onnx(tmp_path / "toy.onnx")
    cache = tmp_path / "timing.cache"
    record = build_engine(onnx_path, TOY, TOY_RANGES, "fp32", tmp_path / "engines", GPU_INFO, cache)
    plan = tmp_path / "engines" / record["path"]
    assert plan.is_file() and cache.is_file()
    assert record["graph_key"] == "toy" and record["precision"] == "fp32"
    assert record["path"] == f"{engine_key(GPU_INFO, record['onnx_sha256'], 'fp32')}.plan"
    check_engine(record, GPU_INFO, record["onnx_sha256"])
    again = build_engine(onnx_path, TOY, TOY_RANGES, "fp32", tmp_path / "engines", GPU_INFO, cache)
    assert again["path"] == record["path"]

    import tensorrt as trt

    from fastblt.runtime.backends.trt import _Engine, _native_handle, cuda_check, cudart

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    runner, stream = _Engine(engine, TOY, "toy"), cuda_check(cudart, cudart.cudaStreamCreate(), "stream")
    try:
        for length in (0, 3, 16):
            x = np.arange(2 * length, dtype=np.float32).reshape(2, length)
            np.testing.assert_array_equal(runner.run({"x": x}, stream, _native_handle(stream))["y"], x + 1)
    finally:
        runner.free()
        cudart.cudaStreamDestroy(stream)


@pytest.mark.gpu
@needs_gpu
def test_unparsable_onnx_is_one_clear_error(tmp_path):
    from fastblt.export.trt_build import EngineBuildError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an ONNX protobuf")
    with pytest.raises(EngineBuildError, match=r"could not parse the ONNX of graph 'toy'"):
        build_engine(bad, TOY, TOY_RANGES, "fp32", tmp_path, GPU_INFO)


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    import torch

    from fastblt.export.bundle import build_bundle
    from fastblt.graphs.data import windows
    from fastblt.graphs.model import BltModel

    torch.manual_seed(0)
    model = BltModel(tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8))).eval()
    heldout = list(windows(b"def add(a, b):\n    return a + b\n" * 8, 96))[:3]
    out = tmp_path_factory.mktemp("trt") / "tiny"
    return model, build_bundle(model, out, ("fp32",), engines="yes", log=lambda m: None, heldout=heldout)


@pytest.mark.gpu
@needs_gpu
def test_bundle_engines_match_the_torch_reference(trt_bundle):
    from fastblt.export.onnx_export import sample_feeds
    from fastblt.export.trt_build import split_graph_key
    from fastblt.runtime.backends.torch_ref import TorchBackend
    from fastblt.runtime.backends.trt import TensorRTBackend
    from fastblt.runtime.generator import Generator
    from fastblt.runtime.manifest import Manifest

    model, bundle = trt_bundle
    records = Manifest.load(bundle).data["engines"]
    standard = [k for k, e in Manifest.load(bundle).data["graphs"].items() if e.get("layout", "standard") == "standard"]
    assert sorted(r["graph_key"] for r in records) == sorted(standard)  # no engines of the ORT-only fused layout
    backend, ref = TensorRTBackend(bundle), TorchBackend(model)
    try:
        for record in records:
            check_engine(record, GPU_INFO, record["onnx_sha256"])
            graph, block = split_graph_key(record["graph_key"])
            for sizes in ({"b": 1, "t": 1, "T": 0, "P": 1, "L": 1}, {"b": 1, "t": 5, "T": 7, "P": 3, "L": 4}):
                feeds = sample_feeds(backend.specs[graph], model.config, {**sizes, "B": block or 4})
                got, want = backend.run(graph, feeds), ref.run(graph, feeds)
                for name in want:
                    np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-4,
                                               err_msg=f"{record['graph_key']}.{name} {sizes}")
        for case in (dict(mode="ar"), dict(mode="bltd", block_size=4), dict(mode="bltdv", block_size=8)):
            a = Generator(ref).generate("def f(x):", max_new_bytes=24, **case)
            b = Generator(backend).generate("def f(x):", max_new_bytes=24, **case)
            assert a.bytes == b.bytes, case
    finally:
        backend.close()


@pytest.mark.gpu
@needs_gpu
def test_stale_engine_is_refused_and_rebuilt(trt_bundle, tmp_path):
    import shutil

    from fastblt.export.bundle import engine_bundle
    from fastblt.runtime.backends.trt import TensorRTBackend
    from fastblt.runtime.manifest import Manifest, write_manifest

    bundle = shutil.copytree(trt_bundle[1], tmp_path / "copy")
    data = Manifest.load(bundle).data
    keys = sorted(r["path"] for r in data["engines"])
    data["engines"][0]["trt_version"] = "0.0.0"
    write_manifest(bundle, {k: v for k, v in data.items() if k not in ("format", "format_version")})
    with pytest.raises(EngineMismatchError, match=r"TensorRT version: engine has '0\.0\.0'.*blt-export engine"):
        TensorRTBackend(bundle)
    engine_bundle(bundle, ("fp32",), log=lambda m: None)
    assert sorted(r["path"] for r in Manifest.load(bundle).data["engines"]) == keys
    TensorRTBackend(bundle).close()


def test_int8_dynamic_is_refused_for_engines():
    with pytest.raises(PrecisionError, match=r"int8-dynamic is ONNX Runtime's CPU quantization.*int8 \(Q/DQ\)"):
        check_precision("int8-dynamic", ADA)
