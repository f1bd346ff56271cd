"""TensorRT engine keys, device checks, precision rules, optimization profiles and the builder's error paths (CPU,
with stand-in tensorrt modules); engine build/run (GPU: skipped with the probe's reason, or failing when
FASTBLT_REQUIRE_GPU=1)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from trt_helpers import REQUIRE_GPU, fake_tensorrt, gpu_or_skip, install

from fastblt.export.trt_build import build_engine, profile_shapes
from fastblt.graphs.config import SUPPORTED_BLOCK_SIZES, tiny_config
from fastblt.graphs.spec import GraphSpec, TensorSpec, dim_ranges, graph_specs
from fastblt.runtime.trt_device import (
    DeviceError,
    DeviceInfo,
    EngineBuildError,
    EngineMismatchError,
    PrecisionError,
    check_engine,
    check_precision,
    device_info,
    engine_key,
    probe,
    require_device,
)

ADA = DeviceInfo("NVIDIA GeForce RTX 4090", "8.9", "10.3.0", False)
ORIN = DeviceInfo("Orin", "8.7", "10.3.0", True)
ONNX_SHA = "ab" * 32
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
ROOT = Path(__file__).resolve().parents[2]


def _record(info: DeviceInfo = ADA, onnx_sha: str = ONNX_SHA) -> dict:
    return {"graph_key": "encoder", "precision": "int8", "path": "0123456789abcdef.plan", "sha256": "00" * 32,
            "gpu_name": info.gpu_name, "compute_capability": info.compute_capability,
            "trt_version": info.trt_version, "onnx_sha256": onnx_sha}


def test_engine_key_is_deterministic_and_short():
    key = engine_key(ADA, ONNX_SHA, "int8")
    assert key == engine_key(DeviceInfo(*dataclasses.astuple(ADA)), ONNX_SHA, "int8")
    assert len(key) == 16 and set(key) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    ("info", "onnx_sha", "precision"),
    [
        (dataclasses.replace(ADA, gpu_name="NVIDIA RTX 6000 Ada Generation"), ONNX_SHA, "int8"),
        (dataclasses.replace(ADA, compute_capability="8.6"), ONNX_SHA, "int8"),
        (dataclasses.replace(ADA, trt_version="10.4.0"), ONNX_SHA, "int8"),
        (ADA, "cd" * 32, "int8"),
        (ADA, ONNX_SHA, "fp32"),
    ],
    ids=["gpu_name", "compute_capability", "trt_version", "onnx_sha256", "precision"],
)
def test_engine_key_changes_with_each_field(info, onnx_sha, precision):
    assert engine_key(info, onnx_sha, precision) != engine_key(ADA, ONNX_SHA, "int8")


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


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_orin_accepts_int8_and_fp32(precision):
    check_precision(precision, ORIN)


@pytest.mark.parametrize("precision", ["fp64", "int2"])
def test_unknown_precision_lists_the_valid_ones(precision):
    with pytest.raises(PrecisionError, match=rf"'{precision}'.*\['fp32', 'fp16', 'bf16', 'int8', 'fp8'\].*Q/DQ "
                                             r"ONNX.*can build: \['fp32', 'fp16', 'bf16', 'int8', 'fp8'\]"):
        check_precision(precision, ADA)


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


TOY = GraphSpec("toy", (TensorSpec("x", "float32", ("b", "T")),), (TensorSpec("y", "float32", ("b", "T")),), "toy")
TOY_RANGES = {"b": (1, 1, 2), "T:toy": (0, 4, 16)}


def _fake_builder(set_shape=None, inputs=(("x", "FLOAT"),), seen=None):
    """A trt.Builder stand-in that parses anything into a network with `inputs` ((name, DataType member)) and
    TOY's output, builds a plan of b"plan", and notes in `seen` the network flags and builder-config calls."""
    from trt_helpers import DataType

    seen = {} if seen is None else seen
    tensors = [SimpleNamespace(name=name, dtype=DataType[kind]) for name, kind in inputs]
    network = SimpleNamespace(num_inputs=len(tensors), num_outputs=1, get_input=lambda i: tensors[i],
                              get_output=lambda i: SimpleNamespace(name="y", dtype=DataType.FLOAT))
    timing = SimpleNamespace(serialize=lambda: b"timing")
    config = SimpleNamespace(clear_flag=lambda flag: seen.setdefault("cleared", []).append(flag),
                             add_optimization_profile=lambda profile: 0,
                             set_memory_pool_limit=lambda pool, size: None,
                             create_timing_cache=lambda blob: timing, set_timing_cache=lambda cache, ignore: True)
    profile = SimpleNamespace(set_shape=set_shape or (lambda name, low, opt, high: None))

    def create_network(flags):
        seen["flags"] = flags
        return network

    return SimpleNamespace(create_network=create_network, create_builder_config=lambda: config,
                           create_optimization_profile=lambda: profile,
                           build_serialized_network=lambda network, config: b"plan")


def _fake_trt(monkeypatch, builder):
    from fastblt.runtime import trt_device

    monkeypatch.setattr(trt_device, "_LOGGER", None)
    trt = fake_tensorrt(builder=builder)
    trt.OnnxParser = lambda network, logger: SimpleNamespace(parse_from_file=lambda path: True)
    install(monkeypatch, trt)
    return trt


def test_a_null_builder_is_one_clear_driver_error(monkeypatch, tmp_path):
    _fake_trt(monkeypatch, lambda logger: None)
    (tmp_path / "toy.onnx").write_bytes(b"onnx")
    with pytest.raises(DeviceError, match=r"could not create its Builder.*driver >= 580.*fastblt\[trt-cu12\]"):
        build_engine(tmp_path / "toy.onnx", TOY, TOY_RANGES, "fp32", tmp_path / "out", ADA)
    assert not (tmp_path / "out").exists()


def test_a_refused_profile_range_is_the_builds_own_error(monkeypatch, tmp_path):
    def set_shape(name, low, opt, high):
        raise ValueError("min dimensions must be <= opt dimensions")

    trt = _fake_trt(monkeypatch, lambda logger: _fake_builder(set_shape))
    (tmp_path / "toy.onnx").write_bytes(b"onnx")
    with pytest.raises(EngineBuildError, match=r"toy\.onnx \(graph 'toy'\): TensorRT refused the optimization "
                                               r"profile of input 'x' \(min \(1, 0\), opt \(1, 4\), max \(2, 16\)\)"
                                               r": min dimensions must be <= opt"):
        build_engine(tmp_path / "toy.onnx", TOY, TOY_RANGES, "fp32", tmp_path / "out", ADA, opt_level=0)
    assert trt.Logger.created == 1


@pytest.mark.parametrize("level", [-1, 6, 1.5, "0"])
def test_builder_optimization_level_is_checked_before_tensorrt(tmp_path, level):
    with pytest.raises(ValueError, match=r"builder optimization level is an integer in 0\.\.5"):
        build_engine(tmp_path / "missing.onnx", TOY, TOY_RANGES, "fp32", tmp_path, ADA, opt_level=level)


# ---- the GPU gate -------------------------------------------------------------------------------------------------

def test_without_a_gpu_the_skip_carries_the_probes_reason(monkeypatch):
    monkeypatch.delenv(REQUIRE_GPU, raising=False)
    info, reason = probe()
    if info is not None:
        pytest.skip("this machine has a usable GPU")  # the gate's other branch runs the GPU tests below
    with pytest.raises(pytest.skip.Exception, match="no usable GPU for TensorRT: ") as skipped:
        gpu_or_skip()
    assert reason and reason in str(skipped.value)


@pytest.mark.parametrize("value", ["1", "yes"])
def test_require_gpu_turns_no_gpu_into_a_failure(monkeypatch, value):
    monkeypatch.setenv(REQUIRE_GPU, value)
    monkeypatch.setitem(sys.modules, "cuda", None)  # no cuda-python: never a usable GPU
    with pytest.raises(pytest.fail.Exception, match=rf"cuda-python is not installed.*{REQUIRE_GPU} is set"):
        gpu_or_skip()


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_a_gpu_run_without_a_gpu_fails_instead_of_passing_by_skips():
    """The GPU tests of this file, run as a GPU run would (-m gpu): green with skips without the variable,
    red with FASTBLT_REQUIRE_GPU=1."""
    def run(**env):
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-rs", __file__]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**{k: v for k, v in os.environ.items() if k != REQUIRE_GPU}, **env})

    quiet = run()
    assert quiet.returncode == 0 and "4 skipped" in quiet.stdout and "no usable GPU for TensorRT: " in quiet.stdout
    strict = run(**{REQUIRE_GPU: "1"})
    assert strict.returncode == 1 and "4 errors" in strict.stdout and f"{REQUIRE_GPU} is set" in strict.stdout


# ---- GPU: real TensorRT builds (skipped with the reason on CPU machines) -------------------------------------------

@pytest.fixture(scope="module")
def gpu():
    return gpu_or_skip()


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
def test_build_engine_writes_a_keyed_plan_and_timing_cache(gpu, tmp_path):
    onnx_path = _toy_onnx(tmp_path / "toy.onnx")
    cache = tmp_path / "timing.cache"
    record = build_engine(onnx_path, TOY, TOY_RANGES, "fp32", tmp_path / "engines", gpu, cache, opt_level=0)
    plan = tmp_path / "engines" / record["path"]
    assert plan.is_file() and cache.is_file()
    assert record["graph_key"] == "toy" and record["precision"] == "fp32"
    assert record["path"] == f"{engine_key(gpu, record['onnx_sha256'], 'fp32')}.plan"
    check_engine(record, gpu, record["onnx_sha256"])
    again = build_engine(onnx_path, TOY, TOY_RANGES, "fp32", tmp_path / "engines", gpu, cache, opt_level=0)
    assert again["path"] == record["path"]

    from fastblt.runtime.backends.trt import _Engine, _native_handle, create, cuda_check, cudart, trt
    from fastblt.runtime.backends.trt_cache import Copies

    engine = create(trt, "Runtime").deserialize_cuda_engine(plan.read_bytes())
    runner, stream = _Engine(engine, TOY, "toy"), cuda_check(cudart, cudart.cudaStreamCreate(), "stream")
    try:
        for length in (0, 3, 16):
            x = np.arange(2 * length, dtype=np.float32).reshape(2, length)
            copies = Copies(cudart, stream)
            np.testing.assert_array_equal(runner.run({"x": x}, copies, _native_handle(stream))["y"], x + 1)
            assert (copies.now.h2d, copies.now.d2h) == (x.nbytes, x.nbytes)
    finally:
        runner.free()
        cudart.cudaStreamDestroy(stream)


@pytest.mark.gpu
def test_unparsable_onnx_is_one_clear_error(gpu, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an ONNX protobuf")
    with pytest.raises(EngineBuildError, match=r"could not parse the ONNX of graph 'toy'"):
        build_engine(bad, TOY, TOY_RANGES, "fp32", tmp_path, gpu)


@pytest.fixture(scope="module")
def trt_bundle(gpu, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    import torch

    from fastblt.export.bundle import build_bundle
    from fastblt.graphs.model import BltModel
    from fastblt.graphs.training.data import windows

    torch.manual_seed(0)
    model = BltModel(tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8))).eval()
    heldout = list(windows(b"def add(a, b):\n    return a + b\n" * 8, 96))[:3]
    out = tmp_path_factory.mktemp("trt") / "tiny"
    return model, build_bundle(model, out, ("fp32",), engines="yes", log=lambda m: None, heldout=heldout)


@pytest.mark.gpu
def test_bundle_engines_match_the_torch_reference(gpu, trt_bundle):
    """Per graph and output against torch; the modes only have to run (a tiny random model's greedy bytes can
    flip on a near tie without the engine being wrong: `make gpu-check` compares real-text calls instead)."""
    from fastblt.export.onnx_export import sample_feeds
    from fastblt.graphs.constants import split_graph_key
    from fastblt.runtime.backends.torch_ref import TorchBackend
    from fastblt.runtime.backends.trt import TensorRTBackend
    from fastblt.runtime.generator import Generator
    from fastblt.runtime.manifest import Manifest

    model, bundle = trt_bundle
    records = [r.to_dict() for r in Manifest.load(bundle).engines]
    standard = Manifest.load(bundle).standard_keys()
    assert sorted(r["graph_key"] for r in records) == sorted(standard)  # no engines of the ORT-only fused layout
    backend, ref = TensorRTBackend(bundle), TorchBackend(model)
    try:
        for record in records:
            check_engine(record, gpu, record["onnx_sha256"])
            graph, block = split_graph_key(record["graph_key"])
            for sizes in ({"b": 1, "t": 1, "T": 0, "P": 1, "L": 1}, {"b": 1, "t": 5, "T": 7, "P": 3, "L": 4}):
                feeds = sample_feeds(backend.specs[graph], model.config, {**sizes, "B": block or 4})
                got, want = backend.run(graph, feeds), ref.run(graph, feeds)
                for name in want:
                    np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-4,
                                               err_msg=f"{record['graph_key']}.{name} {sizes}")
        for case in (dict(mode="ar"), dict(mode="bltd", block_size=4), dict(mode="blts", draft_k=4),
                     dict(mode="bltdv", block_size=8)):
            result = Generator(backend).generate("def f(x):", max_new_bytes=24, **case)
            assert len(result.bytes) == 24 or result.stop_reason == "eos", case
    finally:
        backend.close()


@pytest.mark.gpu
def test_stale_engine_is_refused_and_rebuilt(gpu, trt_bundle, tmp_path):
    import shutil

    from fastblt.export.bundle import engine_bundle
    from fastblt.runtime.backends.trt import TensorRTBackend
    from fastblt.runtime.manifest import Manifest, write_manifest

    bundle = shutil.copytree(trt_bundle[1], tmp_path / "copy")
    data = Manifest.load(bundle).to_dict()
    keys = sorted(r["path"] for r in data["engines"])
    data["engines"][0]["trt_version"] = "0.0.0"
    write_manifest(bundle, data)
    with pytest.raises(EngineMismatchError, match=r"TensorRT version: engine has '0\.0\.0'.*blt-export engine"):
        TensorRTBackend(bundle)
    engine_bundle(bundle, ("fp32",), log=lambda m: None)
    assert sorted(r.path for r in Manifest.load(bundle).engines) == keys
    TensorRTBackend(bundle).close()


def test_int8_dynamic_is_refused_for_engines():
    with pytest.raises(PrecisionError, match=r"int8-dynamic is ONNX Runtime's CPU quantization.*int8 \(Q/DQ\)"):
        check_precision("int8-dynamic", ADA)


# ---- half precision: strongly typed builds from the ONNX's own types (stand-in builder) -------------------------

HALF_TOY = GraphSpec("toy", (TensorSpec("x", "float32", ("b", "T")), TensorSpec("past_key", "float16", ("b", "T"))),
                     (TensorSpec("y", "float32", ("b", "T")),), "toy")


@pytest.mark.parametrize(("precision", "cache_type"), [("fp16", "HALF"), ("bf16", "BF16")])
def test_half_engines_are_strongly_typed_builds_without_precision_flags(monkeypatch, tmp_path, precision, cache_type):
    """The network is created with only STRONGLY_TYPED (the stand-in's value 5), and no builder flag is set:
    the stand-in config has no set_flag, so a BuilderFlag.FP16/BF16 would fail here; TF32 is left alone."""
    seen = {}
    _fake_trt(monkeypatch, lambda logger: _fake_builder(inputs=(("x", "FLOAT"), ("past_key", cache_type)), seen=seen))
    (tmp_path / "toy.onnx").write_bytes(b"onnx")
    record = build_engine(tmp_path / "toy.onnx", HALF_TOY, TOY_RANGES, precision, tmp_path / "out", ORIN)
    assert seen["flags"] == 1 << 5 and "cleared" not in seen
    assert record["precision"] == precision and (tmp_path / "out" / record["path"]).read_bytes() == b"plan"
    assert record["path"] == f"{engine_key(ORIN, record['onnx_sha256'], precision)}.plan"


def test_fp32_engines_stay_strongly_typed_with_tf32_off(monkeypatch, tmp_path):
    seen = {}
    trt = _fake_trt(monkeypatch, lambda logger: _fake_builder(seen=seen))
    (tmp_path / "toy.onnx").write_bytes(b"onnx")
    build_engine(tmp_path / "toy.onnx", TOY, TOY_RANGES, "fp32", tmp_path / "out", ADA)
    assert seen["flags"] == 1 << 5 and seen["cleared"] == [trt.BuilderFlag.TF32]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_half_engine_from_an_fp32_onnx_is_refused(monkeypatch, tmp_path, precision):
    """A strongly typed build of an fp32 graph would silently give an fp32 engine under a half name."""
    _fake_trt(monkeypatch, lambda logger: _fake_builder(inputs=(("x", "FLOAT"), ("past_key", "FLOAT"))))
    (tmp_path / "toy.onnx").write_bytes(b"onnx")
    with pytest.raises(EngineBuildError, match=rf"input 'past_key' is DataType\.FLOAT, but a {precision} engine is "
                                               rf"built from an ONNX whose KV cache is DataType\.(HALF|BF16).*"
                                               rf"blt-export build --precision fp32,{precision}"):
        build_engine(tmp_path / "toy.onnx", HALF_TOY, TOY_RANGES, precision, tmp_path / "out", ADA)
    assert not (tmp_path / "out").exists()


def test_half_engines_need_strongly_typed_networks(monkeypatch, tmp_path):
    seen = {}
    trt = _fake_trt(monkeypatch, lambda logger: _fake_builder(inputs=(("x", "FLOAT"), ("past_key", "HALF")),
                                                              seen=seen))
    trt.NetworkDefinitionCreationFlag = SimpleNamespace()  # a TensorRT without strongly typed networks
    (tmp_path / "toy.onnx").write_bytes(b"onnx")
    with pytest.raises(PrecisionError, match=r"fp16 engines are built as strongly typed networks, which TensorRT "
                                             r"10\.3\.0 lacks.*TensorRT >= 10\.3, or build fp32/int8 engines"):
        build_engine(tmp_path / "toy.onnx", HALF_TOY, TOY_RANGES, "fp16", tmp_path / "out", ADA)
    assert "flags" not in seen  # refused before any network exists
    build_engine(tmp_path / "toy.onnx", HALF_TOY, TOY_RANGES, "fp32", tmp_path / "out", ADA)
    assert seen["flags"] == 0


def test_bf16_below_ampere_is_refused_before_tensorrt(tmp_path):
    turing = DeviceInfo("Tesla T4", "7.5", "10.3.0", False)
    with pytest.raises(PrecisionError, match=r"bf16 needs compute capability >= 8\.0.*build fp16 engines instead"):
        build_engine(tmp_path / "missing.onnx", HALF_TOY, TOY_RANGES, "bf16", tmp_path, turing)
