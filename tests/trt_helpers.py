"""TensorRT test helpers: the GPU gate (skip with the probe's reason, or fail under FASTBLT_REQUIRE_GPU=1) and
minimal stand-ins for the `tensorrt` and `cuda.bindings.runtime` modules, so the error paths of the builder and
the backend run on CPU machines. The stand-ins implement only the calls fastblt makes, with the documented
signatures (cuda-python's `(err, value)` tuples, TensorRT's name-based tensor API).

The stand-in GPU (`FakeDevice`) is numpy memory at addresses no host pointer has: copies really move bytes and
check what cudaMemcpy/cudaMemcpy2D document (direction, pitches, bounds, no overlap), and an engine built with
`compute=` reads its inputs from it and writes its outputs to it, so a backend that keeps state on the device can
be checked against one that copies everything. Nothing here says anything about a real GPU."""

from __future__ import annotations

import bisect
import ctypes
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
    cudaErrorInvalidValue = 1
    cudaErrorInvalidPitchValue = 12
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInvalidMemcpyDirection = 21
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.Enum):  # noqa: N801
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class FakeDevice:
    """GPU memory: each allocation a numpy byte array at an address above 2**48 (above every x86-64/arm64 user
    pointer, so host and device addresses never mix up). Host pointers are read and written through ctypes, as
    the CUDA runtime would. `copied` counts the bytes each kind of copy moved: an independent check of a
    backend's own counter."""

    BASE = 1 << 48
    GUARD = 4096  # unmapped bytes between allocations: an overrun is an error, never another buffer's bytes

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blocks: dict[int, np.ndarray] = {}
        self._bases: list[int] = []
        self._next = self.BASE
        self.copied = {kind: 0 for kind in cudaMemcpyKind}
        self.frees = 0

    @property
    def live_bytes(self) -> int:
        """Bytes allocated and not freed."""
        return sum(b.size for b in self.blocks.values())

    def malloc(self, nbytes: int) -> int:
        with self.lock:
            base = self._next
            self._next += -(-max(nbytes, 1) // 256) * 256 + self.GUARD
            self.blocks[base] = np.zeros(nbytes, np.uint8)
            bisect.insort(self._bases, base)
            return base

    def free(self, ptr: int) -> bool:
        with self.lock:
            if ptr not in self.blocks:
                return False
            del self.blocks[ptr]
            self._bases.remove(ptr)
            self.frees += 1
            return True

    def on_device(self, ptr: int) -> bool:
        return ptr >= self.BASE

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """The nbytes bytes at `ptr` (device or host) as a writable uint8 array; ValueError outside an allocation."""
        if not self.on_device(ptr):
            if nbytes == 0:
                return np.zeros(0, np.uint8)
            return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
        with self.lock:
            i = bisect.bisect_right(self._bases, ptr) - 1
            base = self._bases[i] if i >= 0 else None
            block = self.blocks.get(base)
        if block is None or ptr - base + nbytes > block.size:
            raise ValueError(f"device range {ptr:#x}+{nbytes} is outside every allocation")
        return block[ptr - base: ptr - base + nbytes]

    def array(self, ptr: int, shape, dtype) -> np.ndarray:
        """A typed view of device memory (what an engine reads and writes)."""
        dtype = np.dtype(dtype)
        return self.view(ptr, int(np.prod(shape)) * dtype.itemsize).view(dtype).reshape(shape)


def _direction(device: FakeDevice, dst: int, src: int, kind) -> bool:
    want = {cudaMemcpyKind.cudaMemcpyHostToDevice: (True, False), cudaMemcpyKind.cudaMemcpyDeviceToHost: (False, True),
            cudaMemcpyKind.cudaMemcpyDeviceToDevice: (True, True)}
    return want.get(kind) == (device.on_device(dst), device.on_device(src))


def _rows_overlap(dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> bool:
    """Whether two 2D copy areas share a byte (`height` rows of `width` bytes, `pitch` apart)."""
    if dst + (height - 1) * dpitch + width <= src or src + (height - 1) * spitch + width <= dst:
        return False
    if dpitch == spitch:  # some rows r, r' with |dst - src + (r - r') * pitch| < width
        m = np.arange(-(height - 1), height)
        return bool((np.abs(dst - src + m * dpitch) < width).any())
    rows = np.arange(height)[:, None]
    span = lambda start, pitch: (start + rows * pitch + np.arange(width)[None]).ravel()  # noqa: E731
    return np.intersect1d(span(dst, dpitch), span(src, spitch)).size > 0


def fake_cudart(count_error: cudaError_t = cudaError_t.cudaSuccess, driver_cuda: int = 13000,
                device: FakeDevice | None = None):
    """A `cuda.bindings.runtime` with one visible "Fake GPU" (cc 8.9), or `count_error` from cudaGetDeviceCount.
    Its memory is `device` (a fresh FakeDevice by default, as `mod.device`); copies execute when issued, which
    one stream's ordering allows."""
    ok, bad = cudaError_t.cudaSuccess, cudaError_t.cudaErrorInvalidValue
    mod = types.ModuleType("cuda.bindings.runtime")
    mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
    mod.cudaError_t, mod.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    mod.device = dev = device or FakeDevice()
    mod.cudaGetDeviceCount = lambda: (count_error, 0 if count_error != ok else 1)
    mod.cudaDriverGetVersion = lambda: (ok, driver_cuda)
    mod.cudaRuntimeGetVersion = lambda: (ok, 13000)
    mod.cudaGetDevice = lambda: (ok, 0)
    mod.cudaGetDeviceProperties = lambda device: (ok, SimpleNamespace(name=b"Fake GPU\x00", major=8, minor=9))
    mod.cudaStreamCreate = lambda: (ok, 7)
    mod.cudaStreamDestroy = lambda stream: (ok,)
    mod.cudaStreamSynchronize = lambda stream: (ok,)
    mod.cudaMalloc = lambda nbytes: (ok, dev.malloc(nbytes))
    mod.cudaFree = lambda ptr: (ok,) if dev.free(ptr) else (cudaError_t.cudaErrorInvalidDevicePointer,)

    def memcpy(dst, src, count, kind, stream):
        """cudaMemcpyAsync(dst, src, count, kind, stream) -> (err,)"""
        if not _direction(dev, dst, src, kind):
            return (cudaError_t.cudaErrorInvalidMemcpyDirection,)
        try:
            dev.view(dst, count)[...] = dev.view(src, count)
        except ValueError:
            return (bad,)
        dev.copied[kind] += count
        return (ok,)

    def memcpy2d(dst, dpitch, src, spitch, width, height, kind, stream):
        """cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, stream) -> (err,): `height` rows of
        `width` bytes, rows `dpitch`/`spitch` bytes apart; the areas may not overlap."""
        if width > dpitch or width > spitch:
            return (cudaError_t.cudaErrorInvalidPitchValue,)
        if not _direction(dev, dst, src, kind):
            return (cudaError_t.cudaErrorInvalidMemcpyDirection,)
        if not width or not height:
            return (ok,)
        d2d = kind == cudaMemcpyKind.cudaMemcpyDeviceToDevice
        if d2d and _rows_overlap(dst, dpitch, src, spitch, width, height):
            return (bad,)
        try:
            out = dev.view(src, (height - 1) * spitch + width)
            into = dev.view(dst, (height - 1) * dpitch + width)
        except ValueError:
            return (bad,)
        rows = lambda buf, pitch: np.lib.stride_tricks.as_strided(buf, (height, width), (pitch, 1))  # noqa: E731
        rows(into, dpitch)[...] = rows(out, spitch).copy()
        dev.copied[kind] += width * height
        return (ok,)

    mod.cudaMemcpyAsync = memcpy
    mod.cudaMemcpy2DAsync = memcpy2d
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
    HALF = np.float16
    BF16 = "bfloat16"  # no numpy type: trt.nptype refuses it, as TensorRT's does
    INT32 = np.int32
    INT64 = np.int64
    BOOL = np.bool_


SPEC_TYPES = {"float32": DataType.FLOAT, "float16": DataType.HALF, "bfloat16": DataType.BF16,
              "int32": DataType.INT32, "int64": DataType.INT64, "bool": DataType.BOOL}


def _nptype(dtype: DataType):
    if dtype is DataType.BF16:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return dtype.value


def _numpy(dtype: DataType) -> np.dtype:
    if dtype is DataType.BF16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype.value)


def toy_graph(spec, inputs: dict[str, np.ndarray], out_dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """A deterministic numpy stand-in for one of the five graphs (batch 1). Each new row's outputs depend on its
    own inputs, on the rows before it in the call, and on every cache entry it may see (decoder_block: the
    columns its bias leaves open), weighted by the entry's place in the window, so a device cache with a wrong,
    missing, stale or shifted entry changes every later output. Entropies cross the tiny config's threshold
    now and then (patches close); logits vary with the row (greedy decoding takes different bytes) and favour
byte ids, so runs are not cut short by an end-of-sequence id."""
    first = spec.inputs[0].name
    t = inputs[first].shape[1]
    f = np.zeros(t)
    plain = [ts.name for ts in spec.inputs if not ts.name.startswith("past_") and ts.name != "attn_bias"]
    for k, name in enumerate(plain):
        x = np.asarray(inputs[name], dtype=np.float64)
        f += 0.37 * (k + 1) * np.cos(0.1 * x.reshape(t, -1) * (1 + np.arange(x.size // t))).sum(axis=1)
    ctx = np.zeros(t)
    if "past_key" in inputs:
        key = np.asarray(inputs["past_key"], dtype=np.float64)
        value = np.asarray(inputs["past_value"], dtype=np.float64)
        T, d = key.shape[3], key.shape[4]
        per_entry = (key * np.cos(np.arange(d))).sum(axis=(0, 1, 2, 4)) + 2 * value.sum(axis=(0, 1, 2, 4))
        weighted = per_entry * np.sin(1 + np.arange(T))
        if "attn_bias" in inputs:
            ctx = ((np.asarray(inputs["attn_bias"])[0, :, :T] > -1) * weighted).sum(axis=1)
        else:
            ctx[:] = weighted.sum()
    g = f + 0.7 * ctx + 0.5 * np.concatenate([[0.0], np.cumsum(f)[:-1]])
    out = {}
    for ts in spec.outputs:
        dtype = out_dtypes[ts.name]
        if ts.name.startswith(("new_", "block_")):
            n_layers, _, heads, _, d = (s if isinstance(s, int) else 1 for s in ts.shape)
            grid = (0.3 * np.arange(n_layers)[:, None, None, None, None]
                    + 0.5 * np.arange(heads)[None, None, :, None, None]
                    + 0.11 * np.arange(d)[None, None, None, None, :] + 0.7 * g[None, None, None, :, None])
            value = np.sin(grid) if ts.name.endswith("_key") else np.cos(grid)
        elif ts.name == "entropies":
            value = (3.0 + 3.0 * np.sin(1.3 * g))[None]
        else:
            rest = [s if isinstance(s, int) else 1 for s in ts.shape[2:]]
            j = np.arange(int(np.prod(rest)))
            value = (np.sin(0.01 * g[:, None] * (j + 1) + j)).reshape(1, t, *rest)
            if ts.name == "logits":  # bytes only (ids 4..259): no EOS ends a run early, no MASK/PAD is drawn
                value[..., :4] -= 10.0
                value[..., 260:] -= 10.0
        out[ts.name] = np.ascontiguousarray(value, dtype=dtype)
    return out


class FakeEngine:
    """An engine over a GraphSpec: output shapes follow the spec's symbolic dims from the bound input shapes.
    `shape_io` / `host` name tensors reported as shape-inference I/O or host-located; `execute_async_v3` records
    the most calls ever in flight at once. `dtypes` overrides tensor types (e.g. {"past_key": DataType.HALF}).
    With `device` (a FakeDevice), each execution reads its inputs from the bound device addresses, computes
    `compute(spec, inputs, output dtypes)` (toy_graph by default) and writes the outputs there; `log` keeps
    every call's inputs and outputs."""

    def __init__(self, spec, shape_io=(), host=(), dtypes=None, device: FakeDevice | None = None,
                 compute=toy_graph) -> None:
        self.spec, self.shape_io, self.host = spec, set(shape_io), set(host)
        self.names = [*spec.input_names, *spec.output_names]
        self.num_io_tensors = len(self.names)
        self.active = self.most_active = self.calls = 0
        self.lock = threading.Lock()
        self.types = {ts.name: SPEC_TYPES[ts.dtype] for ts in (*spec.inputs, *spec.outputs)}
        self.types.update(dtypes or {})
        self.device, self.compute = device, compute
        self.log: list[tuple[dict, dict]] = []

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name in self.spec.input_names else TensorIOMode.OUTPUT

    def is_shape_inference_io(self, name):
        return name in self.shape_io

    def get_tensor_location(self, name):
        return TensorLocation.HOST if name in self.host else TensorLocation.DEVICE

    def get_tensor_dtype(self, name):
        return self.types[name]

    def get_tensor_profile_shape(self, name, profile):
        return (0,), (1,), (2,)

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}

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
        self.addresses[name] = ptr
        return bool(ptr)

    def _compute(self) -> None:
        engine, dev = self.engine, self.engine.device
        inputs = {ts.name: dev.array(self.addresses[ts.name], self.shapes[ts.name], _numpy(engine.types[ts.name]))
                  for ts in engine.spec.inputs}
        dtypes = {ts.name: _numpy(engine.types[ts.name]) for ts in engine.spec.outputs}
        outs = engine.compute(engine.spec, inputs, dtypes)
        for ts in engine.spec.outputs:
            dev.array(self.addresses[ts.name], outs[ts.name].shape, dtypes[ts.name])[...] = outs[ts.name]
        engine.log.append(({k: v.copy() for k, v in inputs.items()}, outs))

    def execute_async_v3(self, handle):
        engine = self.engine
        with engine.lock:
            engine.active += 1
            engine.calls += 1
            engine.most_active = max(engine.most_active, engine.active)
        try:
            if engine.device is not None:
                self._compute()
            else:
                time.sleep(0.002)  # long enough for an unsynchronized second caller to overlap
        finally:
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
    mod.nptype = _nptype
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
