"""The TensorRT device facts shared by the engine builder (export) and the trt backend (runtime): which GPU,
driver and TensorRT this is, engine keys, and the checks that refuse an engine or precision the device cannot run.

tensorrt and cuda-python are imported inside functions, so this module imports on any CPU machine. A TensorRT
Builder or Runtime is only created after the CUDA probe has passed: on a machine without a usable driver,
TensorRT returns a null object (a raw TypeError in Python) or one that crashes when used.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

TRT_HINT = ("the TensorRT backend needs tensorrt (>= 10.3) and cuda-python: pip install 'fastblt[trt]' (CUDA 13, "
            "NVIDIA driver >= 580) or 'fastblt[trt-cu12]' (CUDA 12 drivers); on Jetson use JetPack's tensorrt "
            "Python bindings (see docs/tensorrt.md)")
DRIVER_HINT = ("the CUDA 13 builds (the `tensorrt`/`tensorrt-cu13` wheels, cuda-python 13, i.e. 'fastblt[trt]') need "
               "an NVIDIA driver >= 580; with an older driver install the CUDA 12 builds instead: pip uninstall "
               "tensorrt tensorrt-cu13 cuda-python cuda-bindings && pip install 'fastblt[trt-cu12]' "
               "(tensorrt-cu12, cuda-python>=12.6,<13)")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
# the lowest compute capability each precision needs (others: every GPU TensorRT 10 runs on)
MIN_CC = {"bf16": (8, 0), "fp8": (8, 9)}
FP8_MIN_CC = MIN_CC["fp8"]
REBUILD = "rebuild the engines on this machine with `blt-export engine BUNDLE`"
JETSON_NAMES = ("orin", "thor", "tegra", "xavier")


class PrecisionError(ValueError):
    """A precision this GPU or this build path cannot provide."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build the engine; the message lists what TensorRT reported."""


class EngineMismatchError(ValueError):
    """An engine was built for another GPU, TensorRT version or ONNX file."""


class DeviceError(RuntimeError):
    """No usable CUDA GPU for TensorRT: missing packages, no GPU, or a driver too old for the CUDA build."""


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


def _cuda_version(number: int) -> str:
    """cudaDriverGetVersion/cudaRuntimeGetVersion encode 12.6 as 12060."""
    return f"{number // 1000}.{number % 1000 // 10}" if number else "none"


def parse_driver_version(text: str) -> str | None:
    """The release in /proc/driver/nvidia/version ("NVRM version: NVIDIA UNIX [Open Kernel Module for] x86_64
    Kernel Module  580.65.06  ..."), or None."""
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return found.group(1) if found else None


def nvidia_driver_version() -> str | None:
    """The NVIDIA kernel driver release ("580.65.06"), from /proc or nvidia-smi; None where neither says."""
    try:
        found = parse_driver_version(Path("/proc/driver/nvidia/version").read_text())
        if found:
            return found
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def package_version(*names: str) -> str | None:
    """Version of the first installed distribution among `names` (None when none is installed)."""
    for name in names:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def trt_cuda_build() -> str:
    """Which CUDA major version the installed TensorRT wheel was built for (JetPack's apt bindings: unknown)."""
    for major in ("13", "12"):
        if package_version(f"tensorrt-cu{major}", f"tensorrt_cu{major}_libs", f"tensorrt-cu{major}-libs"):
            return f"CUDA {major}"
    return "unknown CUDA build (not a PyPI wheel: JetPack or a local install)"


def versions() -> dict[str, str]:
    """Driver, CUDA and TensorRT versions as far as this machine can tell, for reports and error messages."""
    out = {"nvidia_driver": nvidia_driver_version() or "not found"}
    try:
        cudart = import_cudart()
    except ImportError:
        out["cuda_python"] = "not installed"
    else:
        out["cuda_python"] = package_version("cuda-python", "cuda-bindings") or "installed (version unknown)"
        for key, call in (("cuda_driver_api", "cudaDriverGetVersion"), ("cuda_runtime", "cudaRuntimeGetVersion")):
            try:
                err, number = getattr(cudart, call)()
                ok = err == cudart.cudaError_t.cudaSuccess
                out[key] = _cuda_version(number) if ok else f"error {getattr(err, 'name', err)}"
            except Exception as exc:  # a broken cuda-python must not hide the other versions
                out[key] = f"error {exc}"
    out["tensorrt"] = package_version("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13_bindings",
                                      "tensorrt_cu12_bindings") or "not installed as a wheel"
    out["tensorrt_cuda_build"] = trt_cuda_build()
    return out


def _driver_problem(cudart, err) -> str:
    """Why cudaGetDeviceCount failed, with the driver and CUDA versions and the route that fixes it."""
    name = getattr(err, "name", str(err))
    try:
        derr, number = cudart.cudaDriverGetVersion()
        driver_cuda = _cuda_version(number) if derr == cudart.cudaError_t.cudaSuccess else "unknown"
    except Exception:
        driver_cuda = "unknown"
    facts = (f"cudaGetDeviceCount returned {name}; the driver ({nvidia_driver_version() or 'version not found'}) "
             f"supports CUDA {driver_cuda}, cuda-python is {package_version('cuda-python', 'cuda-bindings')}, "
             f"TensorRT is a {trt_cuda_build()}")
    if "NoDevice" in name and "Insufficient" not in name:
        return f"no CUDA GPU is visible ({facts}; check CUDA_VISIBLE_DEVICES and nvidia-smi)"
    return f"the CUDA driver cannot run this CUDA build ({facts}): {DRIVER_HINT}"


def probe() -> tuple[DeviceInfo | None, str]:
    """(device, "") when TensorRT can run here, else (None, the reason in words). Creates no TensorRT object."""
    try:
        cudart = import_cudart()
    except ImportError:
        return None, "cuda-python is not installed (pip install 'fastblt[trt]' or 'fastblt[trt-cu12]')"
    try:
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess:
            return None, _driver_problem(cudart, err)
        if count < 1:
            return None, "no CUDA GPU is visible (cudaGetDeviceCount returned 0)"
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
    jetson = Path("/etc/nv_tegra_release").exists() or any(k in name.lower() for k in JETSON_NAMES)
    return DeviceInfo(name, f"{prop.major}.{prop.minor}", str(trt.__version__), jetson), ""


def device_info() -> DeviceInfo | None:
    """The current CUDA GPU and TensorRT version, or None without a GPU, cuda-python or tensorrt."""
    return probe()[0]


def require_device() -> DeviceInfo:
    info, reason = probe()
    if info is None:
        raise DeviceError(f"TensorRT needs an NVIDIA CUDA GPU with tensorrt and cuda-python installed ({reason}); "
                          f"{TRT_HINT}")
    return info


_LOGGER = None
_LOGGER_LOCK = threading.Lock()


def shared_logger(trt):
    """The one trt.Logger of this process: TensorRT keeps the first logger it is given, so builder and runtime
    share it instead of creating one per call."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None:
            _LOGGER = trt.Logger(trt.Logger.WARNING)
        return _LOGGER


def create(trt, kind: str):
    """`trt.Builder` or `trt.Runtime` on the shared logger; a null result is a DeviceError naming the driver and
    the CUDA build, not the TypeError ("factory function returned nullptr") pybind11 raises for it."""
    try:
        obj = getattr(trt, kind)(shared_logger(trt))
    except TypeError as exc:
        obj, detail = None, f" ({exc})"
    else:
        detail = ""
    if obj is None:
        driver = nvidia_driver_version() or "version not found"
        raise DeviceError(f"TensorRT {getattr(trt, '__version__', '?')} could not create its {kind}{detail}: CUDA "
                          f"initialization failed (driver {driver}; TensorRT is a {trt_cuda_build()}); see the "
                          f"TensorRT error above. Usually {DRIVER_HINT}")
    return obj


def engine_key(info: DeviceInfo, onnx_sha256: str, precision: str) -> str:
    """Short deterministic key: a new GPU model, compute capability, TensorRT, ONNX or precision is a new key."""
    blob = json.dumps([info.gpu_name, info.compute_capability, info.trt_version, onnx_sha256, precision])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cc(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def usable_precisions(info: DeviceInfo) -> list[str]:
    """The engine precisions this GPU can run (bf16 from Ampere, fp8 from Ada)."""
    cc = _cc(info.compute_capability)
    return [p for p in PRECISIONS if cc >= MIN_CC.get(p, (0, 0))]


def check_precision(precision: str, info: DeviceInfo) -> None:
    """Refuse a precision the GPU cannot run before spending minutes in the builder; the error names the
    precisions that would work on this GPU."""
    usable = f"engine precisions {info.gpu_name} ({info.compute_capability}) can build: {usable_precisions(info)}"
    if precision == "int8-dynamic":
        raise PrecisionError("int8-dynamic is ONNX Runtime's CPU quantization (integer matmuls with per-call "
                             "activation scales); TensorRT engines are built from int8 (Q/DQ) or fp8 instead; "
                             f"{usable}")
    if precision == "int4":
        raise PrecisionError(f"int4 is ONNX Runtime's weight-only CPU quantization (MatMulNBits), not a TensorRT "
                             f"engine precision; {usable}")
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; valid precisions are {list(PRECISIONS)} (fp16/bf16 "
                             "engines are built from the bundle's half-precision ONNX, int8/fp8 from its Q/DQ ONNX, as "
                             f"strongly typed networks: TensorRT 11 has no precision builder flags); {usable}")
    cc = _cc(info.compute_capability)
    if precision == "fp8" and cc < FP8_MIN_CC:
        raise PrecisionError(f"fp8 needs compute capability >= {FP8_MIN_CC[0]}.{FP8_MIN_CC[1]} (Ada, Hopper or "
                             f"newer); {info.gpu_name} has {info.compute_capability}. Jetson Orin (8.7) supports "
                             f"int8, not fp8: build int8 engines instead; {usable}")
    if precision == "bf16" and cc < MIN_CC["bf16"]:
        raise PrecisionError(f"bf16 needs compute capability >= 8.0 (Ampere or newer, Jetson Orin included); "
                             f"{info.gpu_name} has {info.compute_capability}: build fp16 engines instead; {usable}")


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

