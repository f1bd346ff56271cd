"""The TensorRT device facts shared by the engine builder (export) and the trt backend (runtime): which GPU
and TensorRT this is, engine keys, and the checks that refuse an engine or precision the device cannot run.

tensorrt and cuda-python are imported inside functions, so this module imports on any CPU machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

TRT_HINT = ("the TensorRT backend needs tensorrt (>= 10.3) and cuda-python: pip install 'fastblt[trt]' cuda-python "
            "(on Jetson use JetPack's tensorrt Python bindings; see the README's TensorRT section)")
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
FP8_MIN_CC = (8, 9)
REBUILD = "rebuild the engines on this machine with `blt-export engine BUNDLE`"


class PrecisionError(ValueError):
    """A precision this GPU or this build path cannot provide."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build the engine; the message lists what TensorRT reported."""


class EngineMismatchError(ValueError):
    """An engine was built for another GPU, TensorRT version or ONNX file."""


@dataclass(frozen=True)
class DeviceInfo:
    gpu_name: str
    compute_capability: str  # "8.9"
    trt_version: str
    is_jetson: bool


def import_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` (cuda-python >= 12.6) or the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart

        return cudart
    except ImportError:
        raise ImportError(TRT_HINT) from None


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise ImportError(TRT_HINT) from None
    return tensorrt


def cuda_check(cudart, result, what: str):
    """Unpack a cuda-python `(err, *values)` tuple, raising on any error so a failed call is never ignored."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA {what} failed: {getattr(err, 'name', err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _probe() -> tuple[DeviceInfo | None, str]:
    try:
        cudart = import_cudart()
    except ImportError:
        return None, "cuda-python is not installed (pip install cuda-python)"
    try:
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or count < 1:
            return None, f"no CUDA GPU is visible ({getattr(err, 'name', err)})"
        device = cuda_check(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
        prop = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    except (RuntimeError, OSError) as exc:
        return None, f"the CUDA runtime is unusable ({exc})"
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    name = name.rstrip("\x00").strip()
    try:
        trt = import_tensorrt()
    except ImportError:
        return None, "the tensorrt Python package is not installed"
    jetson = Path("/etc/nv_tegra_release").exists() or any(k in name.lower() for k in ("orin", "tegra", "xavier"))
    return DeviceInfo(name, f"{prop.major}.{prop.minor}", str(trt.__version__), jetson), ""


def device_info() -> DeviceInfo | None:
    """The current CUDA GPU and TensorRT version, or None without a GPU, cuda-python or tensorrt."""
    return _probe()[0]


def require_device() -> DeviceInfo:
    info, reason = _probe()
    if info is None:
        raise RuntimeError(f"TensorRT needs an NVIDIA CUDA GPU with tensorrt and cuda-python installed ({reason}); "
                           f"{TRT_HINT}")
    return info


def engine_key(info: DeviceInfo, onnx_sha256: str, precision: str) -> str:
    """Short deterministic key: a new GPU model, compute capability, TensorRT, ONNX or precision is a new key."""
    blob = json.dumps([info.gpu_name, info.compute_capability, info.trt_version, onnx_sha256, precision])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cc(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def check_precision(precision: str, info: DeviceInfo) -> None:
    """Refuse a precision the GPU cannot run before spending minutes in the builder."""
    if precision == "int8-dynamic":
        raise PrecisionError("int8-dynamic is ONNX Runtime's CPU quantization (integer matmuls with per-call "
                             "activation scales); TensorRT engines are built from int8 (Q/DQ) or fp8 instead")
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; valid precisions are {list(PRECISIONS)} (fp16 is "
                             "built from the bundle's FP16 ONNX, int8/fp8 from its Q/DQ ONNX: TensorRT 11 has no "
                             "precision builder flags)")
    if precision == "fp8" and _cc(info.compute_capability) < FP8_MIN_CC:
        raise PrecisionError(f"fp8 needs compute capability >= {FP8_MIN_CC[0]}.{FP8_MIN_CC[1]} (Ada, Hopper or "
                             f"newer); {info.gpu_name} has {info.compute_capability}. Jetson Orin (8.7) supports "
                             "int8, not fp8: build int8 (or fp16) engines instead")


def check_engine(record: dict, info: DeviceInfo, onnx_sha256: str) -> None:
    """Refuse an engine built elsewhere: TensorRT engines are not portable across GPUs or TensorRT versions."""
    fields = (("GPU name", "gpu_name", info.gpu_name, "this machine has"),
              ("compute capability", "compute_capability", info.compute_capability, "this machine has"),
              ("TensorRT version", "trt_version", info.trt_version, "this machine has"),
              ("ONNX sha256", "onnx_sha256", onnx_sha256, "the bundle's ONNX has"))
    diffs = [f"{label}: engine has {record.get(key)!r}, {here} {want!r}"
             for label, key, want, here in fields if record.get(key) != want]
    if diffs:
        raise EngineMismatchError(f"TensorRT engine {record.get('path')!r} ({record.get('graph_key')}, "
                                  f"{record.get('precision')}) does not match: {'; '.join(diffs)}. Engines only run "
                                  f"on the GPU, compute capability and TensorRT version that built them; {REBUILD}")


def split_graph_key(key: str) -> tuple[str, int | None]:
    """Inverse of `graph_key`: "decoder_block_8" -> ("decoder_block", 8)."""
    if key.startswith("decoder_block_"):
        return "decoder_block", int(key.removeprefix("decoder_block_"))
    return key, None
