"""TensorRT engine building: one serialized engine per graph and precision, keyed to the device that built it.

An engine only runs on the GPU model, compute capability and TensorRT version it was built with, so every
engine record carries those three plus the sha256 of its ONNX, and `check_engine` refuses a stale engine
with the exact difference. Precision comes from the ONNX itself (Q/DQ nodes for int8/fp8, half weights and
activations for fp16/bf16) and the network is strongly typed: TensorRT 11 removed the FP16/INT8 builder flags and
calibrators, and a strongly typed network runs each tensor in the type the ONNX gives it.

tensorrt and cuda-python are imported inside functions, so this module imports on any CPU machine.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from fastblt.graphs.atomic import atomic_file
from fastblt.graphs.constants import graph_key
from fastblt.graphs.spec import GraphSpec, TensorSpec
from fastblt.runtime.manifest import sha256_file
from fastblt.runtime.trt_device import (
    DeviceInfo,
    EngineBuildError,
    PrecisionError,
    check_precision,
    create,
    engine_key,
    import_tensorrt,
    shared_logger,
)

# fp16/bf16 engines: the TensorRT type the ONNX's KV cache inputs carry (graphs keep caches in their own dtype)
HALF_TYPES = {"fp16": "HALF", "bf16": "BF16"}


def network_flags(trt, precision: str) -> int:
    """`create_network` flags: strongly typed wherever this TensorRT has it. fp16/bf16 need it (their types come
    from the ONNX; there is no precision builder flag to fall back on), so without it they are refused."""
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is None:
        if precision in HALF_TYPES:
            raise PrecisionError(f"{precision} engines are built as strongly typed networks, which TensorRT "
                                 f"{trt.__version__} lacks (NetworkDefinitionCreationFlag.STRONGLY_TYPED); install "
                                 "TensorRT >= 10.3, or build fp32/int8 engines")
        return 0
    return 1 << int(strongly_typed)


def _check_half_inputs(trt, network, precision: str, where: str) -> None:
    """A fp16/bf16 engine must come from a half-precision ONNX: a strongly typed build of an fp32 graph would
    silently give an fp32 engine. Checked on the KV cache inputs, which carry the graph's dtype."""
    want = getattr(trt.DataType, HALF_TYPES[precision], None)
    if want is None:
        raise PrecisionError(f"TensorRT {trt.__version__} has no DataType.{HALF_TYPES[precision]}; {precision} "
                             "engines need TensorRT >= 10.3")
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name.startswith("past_") and tensor.dtype != want:
            raise EngineBuildError(f"{where}: input {tensor.name!r} is {tensor.dtype}, but a {precision} engine is "
                                   f"built from an ONNX whose KV cache is {want}: this is not a {precision} graph. "
                                   f"Export the bundle's {precision} graphs (`blt-export build --precision "
                                   f"fp32,{precision}`) and build the engines from them")


def _dim_range(spec: GraphSpec, ts: TensorSpec, dim: int | str, ranges: dict) -> tuple[int, int, int]:
    if isinstance(dim, int):
        return dim, dim, dim
    names = [f"T:{spec.stack}", "B"] if dim == "T+B" else [f"T:{spec.stack}" if dim == "T" else dim]
    missing = [n for n in names if n not in ranges]
    if missing:
        raise ValueError(f"graph {spec.name!r} input {ts.name!r}: no (min, opt, max) range for dim {dim!r} "
                         f"(missing keys {missing}; decoder_block needs dim_ranges(cfg, block_size))")
    lows, opts, highs = zip(*(ranges[n] for n in names), strict=True)
    return sum(lows), sum(opts), sum(highs)


def profile_shapes(spec: GraphSpec, ranges: dict) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Optimization-profile (min, opt, max) shapes of every input, from the graph spec and `dim_ranges`."""
    shapes = {}
    for ts in spec.inputs:
        per_dim = [_dim_range(spec, ts, d, ranges) for d in ts.shape]
        shapes[ts.name] = tuple(tuple(r[i] for r in per_dim) for i in range(3))
    return shapes


def _parser_errors(parser) -> list[str]:
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = ""
        node_name = getattr(err, "node_name", None)
        if node_name is not None and node_name():
            where = f" (node {node_name()!r}, op {err.node_operator()!r})"
        errors.append(f"{err.desc()}{where}")
    return errors


def _timing_cache(config, path: Path | None):
    """Attach the saved timing cache (speeds up rebuilds); a stale or foreign cache falls back to a fresh one."""
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    try:
        cache = config.create_timing_cache(blob)
    except RuntimeError:
        cache = None
    if cache is None or not config.set_timing_cache(cache, False):
        warnings.warn(f"{path}: timing cache not usable with this TensorRT/GPU; starting a fresh one", stacklevel=3)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def _profile(builder, spec: GraphSpec, ranges: dict, where: str):
    """One optimization profile over every input; TensorRT raises (rather than returning False) on a bad range,
    so each failure becomes an EngineBuildError naming the input and its shapes."""
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(spec, ranges).items():
        try:
            ok = profile.set_shape(name, low, opt, high)
        except Exception as exc:  # ValueError/RuntimeError/TypeError depending on the binding version
            raise EngineBuildError(f"{where}: TensorRT refused the optimization profile of input {name!r} (min "
                                   f"{low}, opt {opt}, max {high}): {exc}; each dim needs min <= opt <= max, and "
                                   "static dims must equal the ONNX's") from exc
        if ok is False:
            raise EngineBuildError(f"{where}: TensorRT refused the optimization profile of input {name!r} (min "
                                   f"{low}, opt {opt}, max {high})")
    return profile


def build_engine(onnx_path: str | Path, spec: GraphSpec, ranges: dict, precision: str, out_dir: str | Path,
                 info: DeviceInfo, timing_cache_path: str | Path | None = None, opt_level: int | None = None,
                 workspace_bytes: int | None = None, onnx_digest: str | None = None) -> dict:
    """Build and write `<out_dir>/<key>.plan` for one graph; returns its engine record for the manifest.

    `opt_level` is TensorRT's builder optimization level (0-5, default 3: lower builds faster, runs slower);
    `workspace_bytes` caps the scratch memory the builder may use (Jetson shares it with the CPU)."""
    check_precision(precision, info)
    if opt_level is not None and not (isinstance(opt_level, int) and 0 <= opt_level <= 5):
        raise ValueError(f"opt_level={opt_level!r}: TensorRT's builder optimization level is an integer in 0..5")
    trt = import_tensorrt()
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    cache_path = Path(timing_cache_path) if timing_cache_path is not None else None
    if spec.name == "decoder_block":
        low, _, high = ranges.get("B", (0, 0, -1))
        if low != high:
            raise ValueError(f"decoder_block needs a static block size: pass dim_ranges(cfg, block_size) "
                             f"(got B range {ranges.get('B')})")
        key_name = graph_key(spec.name, low)
    else:
        key_name = graph_key(spec.name)
    onnx_sha = onnx_digest or sha256_file(onnx_path)  # the manifest's digest covers external weights too

    flags = network_flags(trt, precision)
    logger = shared_logger(trt)
    builder = create(trt, "Builder")
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        lines = "\n  - ".join(_parser_errors(parser)) or "(no parser errors recorded; see the TensorRT log above)"
        raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__} could not parse the ONNX of graph "
                               f"{key_name!r}:\n  - {lines}")
    io = (sorted(network.get_input(i).name for i in range(network.num_inputs)),
          sorted(network.get_output(i).name for i in range(network.num_outputs)))
    if io != (sorted(spec.input_names), sorted(spec.output_names)):
        raise EngineBuildError(f"{onnx_path}: ONNX inputs/outputs {io} do not match graph {spec.name!r} "
                               f"({sorted(spec.input_names)}, {sorted(spec.output_names)}); re-export the bundle")
    if precision in HALF_TYPES:
        _check_half_inputs(trt, network, precision, f"{onnx_path} (graph {key_name!r})")

    config = builder.create_builder_config()
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: TF32 matmuls would drift from the reference
    if opt_level is not None:
        config.builder_optimization_level = opt_level
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    where = f"{onnx_path} (graph {key_name!r})"
    if config.add_optimization_profile(_profile(builder, spec, ranges, where)) < 0:
        raise EngineBuildError(f"{where}: TensorRT rejected the optimization profile; see the TensorRT log above")
    cache = _timing_cache(config, cache_path)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__} failed to build the {precision} engine of "
                               f"graph {key_name!r} on {info.gpu_name}; see the TensorRT errors above")
    out_dir.mkdir(parents=True, exist_ok=True)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_file(cache_path, memoryview(cache.serialize()))
    data = memoryview(plan)
    path = out_dir / f"{engine_key(info, onnx_sha, precision)}.plan"
    atomic_file(path, data)
    return {"graph_key": key_name, "precision": precision, "path": path.name,
            "sha256": hashlib.sha256(data).hexdigest(), "gpu_name": info.gpu_name,
            "compute_capability": info.compute_capability, "trt_version": info.trt_version,
            "onnx_sha256": onnx_sha}
