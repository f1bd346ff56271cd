"""The TensorRT backend: runs a bundle's prebuilt engines on one CUDA stream, numpy in and out.

Engines are device-specific, so each one is checked against this GPU, this TensorRT and its ONNX sha256
before it is deserialized: a stale engine is a clear error naming what changed, never a crash inside
TensorRT. Imported only by `load_backend("trt", ...)`; without tensorrt the import fails with the install hint.
"""

from __future__ import annotations

import hashlib
import mmap
import threading
from pathlib import Path

import numpy as np

from fastblt.graphs.constants import feed_key, split_graph_key
from fastblt.graphs.spec import GraphSpec, graph_specs
from fastblt.runtime.backends import BackendBase, FeedError, resolve, static_fused_rows
from fastblt.runtime.manifest import BundleError, EngineEntry, Manifest, resolve_inside
from fastblt.runtime.trt_device import (
    REBUILD,
    TRT_HINT,
    check_engine,
    create,
    cuda_check,
    import_cudart,
    require_device,
)

try:
    import tensorrt as trt
except ImportError:
    raise ImportError(TRT_HINT) from None

cudart = import_cudart()

_MIN_ALLOC = 256  # never hand TensorRT a null address, even for an empty (T = 0) cache tensor


def _native_handle(stream) -> int:
    """The raw cudaStream_t address TensorRT wants (`int(obj)` is deprecated in newer cuda-python)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(stream)
    return int(get_cuda_native_handle(stream))


class _Engine:
    """One deserialized engine: its execution context and grow-only device buffers, reused across calls."""

    def __init__(self, engine, spec: GraphSpec, label: str) -> None:
        self.engine, self.spec, self.label = engine, spec, label
        self.buffers: dict[str, tuple[int, int]] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = sorted(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outputs = sorted(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        if (inputs, outputs) != (sorted(spec.input_names), sorted(spec.output_names)):
            raise BundleError(f"TensorRT engine {label}: tensors {inputs} -> {outputs} do not match graph "
                              f"{spec.name!r} ({list(spec.input_names)} -> {list(spec.output_names)}); {REBUILD}")
        for name in names:  # every tensor here is a device buffer the host copies in and out
            if engine.is_shape_inference_io(name):
                raise BundleError(f"TensorRT engine {label}: tensor {name!r} is a shape tensor (its values feed "
                                  "shape calculations), which this backend does not bind; export the graph so that "
                                  f"shapes come from tensor dimensions only; {REBUILD}")
            if engine.get_tensor_location(name) != trt.TensorLocation.DEVICE:
                raise BundleError(f"TensorRT engine {label}: tensor {name!r} lives in host memory "
                                  f"({engine.get_tensor_location(name)}), but this backend binds device buffers "
                                  f"only; export the graph without host-side shape inputs; {REBUILD}")
        self.dtypes = {}
        for name in names:
            dtype = engine.get_tensor_dtype(name)
            try:
                self.dtypes[name] = np.dtype(trt.nptype(dtype))
            except TypeError:
                raise BundleError(f"TensorRT engine {label}: tensor {name!r} has type {dtype}, which has no numpy "
                                  "equivalent; export the graph with float32/int64/bool inputs and outputs") from None
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT engine {label}: could not create an execution context (out of GPU memory?)")

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self.buffers.get(name, (0, 0))
        if ptr and nbytes <= capacity:
            return ptr
        if ptr:
            cuda_check(cudart, cudart.cudaFree(ptr), "cudaFree")
            del self.buffers[name]
        capacity = max(_MIN_ALLOC, nbytes, capacity + capacity // 2)  # caches grow by a few entries per call
        ptr = int(cuda_check(cudart, cudart.cudaMalloc(capacity), f"cudaMalloc({capacity}) for {name!r}"))
        self.buffers[name] = (ptr, capacity)
        return ptr

    def _to_engine(self, name: str, arr: np.ndarray) -> np.ndarray:
        want = self.dtypes[name]
        if arr.dtype != want and want.kind in "iu" and arr.size:
            limits = np.iinfo(want)
            if arr.min() < limits.min or arr.max() > limits.max:
                raise FeedError(f"{self.label}: input {name!r} has values outside {want} (the engine's type)")
        return np.ascontiguousarray(arr, dtype=want)

    def run(self, feeds: dict[str, np.ndarray], stream, handle: int) -> dict[str, np.ndarray]:
        ctx = self.context
        host = {}
        for name in self.spec.input_names:
            arr = self._to_engine(name, feeds[name])
            if not ctx.set_input_shape(name, arr.shape):
                low, _, high = self.engine.get_tensor_profile_shape(name, 0)
                raise FeedError(f"{self.label}: input {name!r} shape {arr.shape} is outside the engine's "
                                f"optimization profile (min {tuple(low)}, max {tuple(high)})")
            host[name] = arr
        outs = {}
        for name in self.spec.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self.label}: output {name!r} has an unresolved shape {shape}")
            outs[name] = np.empty(shape, self.dtypes[name])
        for name, arr in (*host.items(), *outs.items()):
            if not ctx.set_tensor_address(name, self._buffer(name, arr.nbytes)):
                raise RuntimeError(f"{self.label}: TensorRT rejected the device address of {name!r}")
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, arr in host.items():
            if arr.nbytes:
                cuda_check(cudart, cudart.cudaMemcpyAsync(self.buffers[name][0], arr.ctypes.data, arr.nbytes, kind,
                                                          stream), f"host->device copy of {name!r}")
        if not ctx.execute_async_v3(handle):
            raise RuntimeError(f"{self.label}: TensorRT execute_async_v3 failed; see the TensorRT log above")
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, arr in outs.items():
            if arr.nbytes:
                cuda_check(cudart, cudart.cudaMemcpyAsync(arr.ctypes.data, self.buffers[name][0], arr.nbytes, kind,
                                                          stream), f"device->host copy of {name!r}")
        cuda_check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return {ts.name: outs[ts.name].astype(ts.dtype, copy=False) for ts in self.spec.outputs}

    def free(self) -> None:
        for ptr, _ in self.buffers.values():
            cudart.cudaFree(ptr)
        self.buffers = {}
        self.context = None
        self.engine = None


def _pick_precision(root: Path, records: list[EngineEntry], precision: str | None) -> str:
    available = sorted({r.precision for r in records})
    if not records:
        raise BundleError(f"{root}: the bundle has no TensorRT engines; build them on this machine with "
                          f"`blt-export engine {root}`")
    if precision is None:
        if len(available) == 1:
            return available[0]
        raise BundleError(f"{root}: the bundle has TensorRT engines in several precisions {available}; "
                          "choose one with precision=...")
    if precision not in available:
        raise BundleError(f"{root}: the bundle has no {precision} TensorRT engines (it has {available}); "
                          f"build them on this machine with `blt-export engine {root}` for {precision}")
    return precision


class TensorRTBackend(BackendBase):
    name = "trt"

    def __init__(self, source: str | Path | Manifest, precision: str | None = None, check: bool = True) -> None:
        self._engines: dict[str, _Engine] = {}
        self._stream = None
        # One execution context, its grow-only buffers and the one stream are shared by all callers: two threads
        # in `run` at once would overwrite each other's input shapes, buffers and outputs. Calls are serialized.
        self._lock = threading.Lock()
        self.manifest = source if isinstance(source, Manifest) else Manifest.load(source)
        self.config = self.manifest.config
        self.specs = graph_specs(self.config)
        self.hash_table = self.manifest.open_hash_table()  # gathered on the host; engines take hash_embeds
        self.check = check
        self.fused_block_rows = static_fused_rows(self.manifest.block_sizes)  # not measured on a GPU
        info = require_device()
        records = list(self.manifest.engines)
        self.precision = _pick_precision(self.manifest.root, records, precision)
        self._runtime = create(trt, "Runtime")
        self._stream = cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._handle = _native_handle(self._stream)
        try:
            for record in records:
                if record.precision == self.precision:
                    self._engines[record.graph_key] = self._load(record, info)
            # the fused layout is ONNX Runtime-only
            missing = sorted(set(self.manifest.standard_keys()) - set(self._engines))
            if missing:
                raise BundleError(f"{self.manifest.root}: no {self.precision} TensorRT engine for graphs {missing}; "
                                  f"{REBUILD}")
        except Exception:
            self.close()
            raise

    def _load(self, record: EngineEntry, info) -> _Engine:
        root, key, precision = self.manifest.root, record.graph_key, record.precision
        if not self.manifest.has_file(key, precision):
            raise BundleError(f"{root}: engine {record.path!r} is for graph {key!r} ({precision}), which the "
                              f"manifest does not list; {REBUILD}")
        check_engine(record.to_dict(), info, self.manifest.graphs[key].files[precision].digest)
        path = resolve_inside(root, record.path, f"{root}: engines ({key}, {precision})")
        if not path.is_file():
            raise BundleError(f"{path}: TensorRT engine listed in the manifest is missing; {REBUILD}")
        # memory-mapped: hashed and deserialized from the page cache, no copy of a multi-GB plan on the heap
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if hashlib.sha256(data).hexdigest() != record.sha256:
                raise BundleError(f"{path}: sha256 does not match the manifest (altered or truncated); {REBUILD}")
            engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BundleError(f"{path}: TensorRT {trt.__version__} could not deserialize the engine; {REBUILD}")
        graph, _ = split_graph_key(key)
        if graph not in self.specs:
            raise BundleError(f"{path}: engine for unknown graph {key!r}")
        return _Engine(engine, self.specs[graph], f"{key} ({precision}, {path.name})")

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        resolve(self.specs, graph, feeds, self.check)
        key = feed_key(graph, feeds)
        with self._lock:
            if self._stream is None:
                raise RuntimeError("this TensorRT backend is closed")
            engine = self._engines.get(key)
            if engine is None:
                raise ValueError(f"no {self.precision} TensorRT engine for {key!r} (engines: "
                                 f"{sorted(self._engines)}); export the bundle with this block size and rebuild "
                                 "its engines")
            return engine.run(feeds, self._stream, self._handle)

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.free()
            self._engines = {}
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
                self._stream = None
