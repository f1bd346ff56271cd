"""TensorRT test helpers: the GPU gate (skip with the probe's reason, or fail under FASTBLT_REQUIRE_GPU=1) and
minimal stand-ins for the `tensorrt` and `cuda.bindings.runtime` modules, so the error paths of the builder and
the backend run on CPU machines. The stand-ins implement only the calls fastblt makes, with the documented
signatures (cuda-python's `(err, value)` tuples, TensorRT's name-based tensor API)."""

from __future__ import annotations

import enum
import importlib.machinery
import os
import sys
import threading
import time
import types
from types import SimpleNamespace

import numpy as np
import pytest

from fastblt.runtime.trt_device import probe

REQUIRE_GPU = "FASTBLT_REQUIRE_GPU"


def gpu_or_skip():
    """DeviceInfo of this machine's GPU, or skip with the probe's own reason; a failure instead when
    FASTBLT_REQUIRE_GPU is set, so a GPU run can never report green by skipping every GPU test."""
    info, reason = probe()
    if info is not None:
        return info
    message = f"no usable GPU for TensorRT: {reason}"
    if os.environ.get(REQUIRE_GPU, "") not in ("", "0"):
        pytest.fail(f"{message} ({REQUIRE_GPU} is set: GPU tests must run, not skip)", pytrace=False)
    pytest.skip(message)


class cudaError_t(enum.Enum):  # noqa: N801 - cuda-python's name
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.Enum):  # noqa: N801
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


def fake_cudart(count_error: cudaError_t = cudaError_t.cudaSuccess, driver_cuda: int = 13000):
    """A `cuda.bindings.runtime` with one visible "Fake GPU" (cc 8.9), or `count_error` from cudaGetDeviceCount."""
    ok = cudaError_t.cudaSuccess
    mod = types.ModuleType("cuda.bindings.runtime")
    mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
    mod.cudaError_t, mod.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    pointers = iter(range(1 << 20, 1 << 40, 1 << 20))
    mod.cudaGetDeviceCount = lambda: (count_error, 0 if count_error != ok else 1)
    mod.cudaDriverGetVersion = lambda: (ok, driver_cuda)
    mod.cudaRuntimeGetVersion = lambda: (ok, 13000)
    mod.cudaGetDevice = lambda: (ok, 0)
    mod.cudaGetDeviceProperties = lambda device: (ok, SimpleNamespace(name=b"Fake GPU\x00", major=8, minor=9))
    mod.cudaStreamCreate = lambda: (ok, 7)
    mod.cudaStreamDestroy = lambda stream: (ok,)
    mod.cudaStreamSynchronize = lambda stream: (ok,)
    mod.cudaMalloc = lambda nbytes: (ok, next(pointers))
    mod.cudaFree = lambda ptr: (ok,)
    mod.cudaMemcpyAsync = lambda dst, src, nbytes, kind, stream: (ok,)
    return mod


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class TensorLocation(enum.Enum):
    DEVICE = 0
    HOST = 1


class DataType(enum.Enum):
    FLOAT = np.float32
    INT64 = np.int64
    BOOL = np.bool_


class FakeEngine:
    """An engine over a GraphSpec: output shapes follow the spec's symbolic dims from the bound input shapes.
    `shape_io` / `host` name tensors reported as shape-inference I/O or host-located; `execute_async_v3` records
    the most calls ever in flight at once."""

    def __init__(self, spec, shape_io=(), host=()) -> None:
        self.spec, self.shape_io, self.host = spec, set(shape_io), set(host)
        self.names = [*spec.input_names, *spec.output_names]
        self.num_io_tensors = len(self.names)
        self.active = self.most_active = self.calls = 0
        self.lock = threading.Lock()

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name in self.spec.input_names else TensorIOMode.OUTPUT

    def is_shape_inference_io(self, name):
        return name in self.shape_io

    def get_tensor_location(self, name):
        return TensorLocation.HOST if name in self.host else TensorLocation.DEVICE

    def get_tensor_dtype(self, name):
        ts = next(t for t in (*self.spec.inputs, *self.spec.outputs) if t.name == name)
        return {"float32": DataType.FLOAT, "int64": DataType.INT64, "bool": DataType.BOOL}[ts.dtype]

    def get_tensor_profile_shape(self, name, profile):
        return (0,), (1,), (2,)

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.shapes = engine, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        dims = {}
        for ts in self.engine.spec.inputs:
            for d, n in zip(ts.shape, self.shapes[ts.name], strict=True):
                if isinstance(d, str):
                    dims[d] = n
        ts = next(t for t in self.engine.spec.outputs if t.name == name)
        return tuple(d if isinstance(d, int) else dims[d] for d in ts.shape)

    def set_tensor_address(self, name, ptr):
        return bool(ptr)

    def execute_async_v3(self, handle):
        engine = self.engine
        with engine.lock:
            engine.active += 1
            engine.calls += 1
            engine.most_active = max(engine.most_active, engine.active)
        time.sleep(0.002)  # long enough for an unsynchronized second caller to overlap
        with engine.lock:
            engine.active -= 1
        return True


class Logger:
    WARNING = 2
    created = 0

    def __init__(self, severity) -> None:
        type(self).created += 1
        self.severity = severity


def fake_tensorrt(builder=None, runtime=None, version: str = "10.3.0"):
    """A `tensorrt` module. `builder`/`runtime`: callables taking the logger, standing in for trt.Builder and
    trt.Runtime (e.g. `lambda logger: None`, a null object as on a broken driver)."""
    mod = types.ModuleType("tensorrt")
    mod.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    mod.__version__ = version
    mod.Logger = type("Logger", (Logger,), {"created": 0})
    mod.TensorIOMode, mod.TensorLocation, mod.DataType = TensorIOMode, TensorLocation, DataType
    mod.nptype = lambda dtype: dtype.value
    mod.Builder = builder or (lambda logger: None)
    mod.Runtime = runtime or (lambda logger: None)
    mod.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=5)
    mod.BuilderFlag = SimpleNamespace(TF32=9)
    mod.MemoryPoolType = SimpleNamespace(WORKSPACE=0)
    return mod


def install(monkeypatch, trt=None, cudart=None) -> None:
    """Put the stand-ins into sys.modules for one test (monkeypatch restores them)."""
    if trt is not None:
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
    if cudart is not None:
        cuda = types.ModuleType("cuda")
        cuda.__path__ = []
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__ = []
        bindings.runtime = cudart
        cuda.bindings = bindings
        monkeypatch.setitem(sys.modules, "cuda", cuda)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
