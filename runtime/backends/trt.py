"""The TensorRT backend: runs a bundle's prebuilt engines on one CUDA stream, numpy in and out.

Engines are device-specific, so each one is checked against this GPU, this TensorRT and its ONNX sha256
before it is deserialized: a stale engine is a clear error naming what changed, never a crash inside
TensorRT. Imported only by `load_backend("trt", ...)`; without tensorrt the import fails with the install hint.

By default (`resident=True`) every graph runs in place (`in_place_graphs`): each session's KV caches stay on
the GPU (runtime/backends/trt_cache.py) and only the new rows' inputs and the non-cache outputs cross the bus;
`run` (every input in, every output out) stays available. `transfer` counts the bytes of every call. Not
verified on a GPU.
"""

from __future__ import annotations

import hashlib
import mmap
import threading
import weakref
from pathlib import Path

import numpy as np

from fastblt.graphs.constants import feed_key, numpy_dtype, split_graph_key
from fastblt.graphs.spec import GraphSpec, graph_specs
from fastblt.runtime.backends import BackendBase, FeedError, check_feeds, resolve, static_fused_rows
from fastblt.runtime.backends.trt_cache import _MIN_ALLOC, Copies, DeviceCache, Scratch, TransferCounter
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

CACHE_INPUTS = ("past_key", "past_value")
CACHE_OUTPUTS = ("new_key", "new_value", "block_key", "block_value")  # block_*: decoder_block's


def _bfloat16() -> np.dtype:
    """numpy has no bfloat16: ml_dtypes (installed with onnx) provides one."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("bfloat16 tensors (bf16 engines) need numpy's bfloat16 type from the ml_dtypes package: "
                          "pip install ml_dtypes") from None
    return np.dtype(ml_dtypes.bfloat16)


def _engine_dtype(dtype, label: str, name: str) -> np.dtype:
    """The numpy dtype of an engine tensor; trt.nptype has none for BF16."""
    if dtype == getattr(trt.DataType, "BF16", None):
        try:
            return _bfloat16()
        except ImportError as exc:
            raise BundleError(f"TensorRT engine {label}: tensor {name!r} is bfloat16; {exc}") from None
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise BundleError(f"TensorRT engine {label}: tensor {name!r} has type {dtype}, which has no numpy "
                          "equivalent; export the graph with float32/float16/bfloat16/int64/bool inputs and "
                          "outputs") from None


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
        self.engine, self.label = engine, label
        self.bind_spec(spec)
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
        self.dtypes = {name: _engine_dtype(engine.get_tensor_dtype(name), label, name) for name in names}
        caches = {self.dtypes[n] for n in names if n in CACHE_INPUTS or n in CACHE_OUTPUTS}
        # the dtype a device-resident cache is kept in: the engine's past and new K/V must share it
        self.cache_dtype = caches.pop() if len(caches) == 1 else None
        self.cache_types = {n: str(self.dtypes[n]) for n in names if n in CACHE_INPUTS or n in CACHE_OUTPUTS}
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT engine {label}: could not create an execution context (out of GPU memory?)")

    def bind_spec(self, spec: GraphSpec) -> None:
        """The graph spec the engine serves (names; the dtypes outputs are handed back in)."""
        self.spec = spec
        self.out_dtypes = {ts.name: numpy_dtype(ts.dtype) for ts in spec.outputs}

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

    def run(self, feeds: dict[str, np.ndarray], copies: Copies, handle: int, resident=None,
            append=None) -> dict[str, np.ndarray]:
        """One call on `copies`' stream. `resident` = (DeviceCache, lo, n): past_key/past_value are gathered on the
        device from that cache's slots lo..lo+n-1 instead of copied in, the cache outputs stay on the device
        and only the other outputs come back; `append(key_ptr, value_ptr, t)` then gets the new K/V's device
        addresses before the stream is synchronized (None: the call leaves the cache as it was)."""
        ctx = self.context
        host, shapes = {}, {}
        for name in self.spec.input_names:
            if resident is not None and name in CACHE_INPUTS:
                cache, _, n = resident
                layers, heads, d = cache.geometry
                shapes[name] = (layers, 1, heads, n, d)
            else:
                host[name] = self._to_engine(name, feeds[name])
                shapes[name] = host[name].shape
            if not ctx.set_input_shape(name, shapes[name]):
                low, _, high = self.engine.get_tensor_profile_shape(name, 0)
                raise FeedError(f"{self.label}: input {name!r} shape {shapes[name]} is outside the engine's "
                                f"optimization profile (min {tuple(low)}, max {tuple(high)})")
        outs, device_outs = {}, {}
        for name in self.spec.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self.label}: output {name!r} has an unresolved shape {shape}")
            if resident is not None and name in CACHE_OUTPUTS:
                device_outs[name] = shape
            else:
                outs[name] = np.empty(shape, self.dtypes[name])
        sizes = {name: int(np.prod(shape)) * self.dtypes[name].itemsize
                 for name, shape in (*shapes.items(), *device_outs.items())}
        sizes.update((name, arr.nbytes) for name, arr in outs.items())
        for name, nbytes in sizes.items():
            if not ctx.set_tensor_address(name, self._buffer(name, nbytes)):
                raise RuntimeError(f"{self.label}: TensorRT rejected the device address of {name!r}")
        for name, arr in host.items():
            copies.h2d(self.buffers[name][0], arr, repr(name))
        if resident is not None:
            cache, lo, n = resident
            cache.gather(lo, n, tuple(self.buffers[name][0] for name in CACHE_INPUTS), copies)
        if not ctx.execute_async_v3(handle):
            raise RuntimeError(f"{self.label}: TensorRT execute_async_v3 failed; see the TensorRT log above")
        for name, arr in outs.items():
            copies.d2h(arr, self.buffers[name][0], repr(name))
        if append is not None:
            key, value = (n for n in self.spec.output_names if n in device_outs)
            append(self.buffers[key][0], self.buffers[value][0], device_outs[key][3])
        copies.wait()
        return {name: arr.astype(self.out_dtypes[name], copy=False) for name, arr in outs.items()}

    def free(self) -> None:
        for ptr, _ in self.buffers.values():
            cudart.cudaFree(ptr)
        self.buffers = {}
        self.context = None
        self.engine = None


def _host_spec(spec: GraphSpec) -> GraphSpec:
    """What a caller feeds and gets back when the graph runs in place: no cache inputs or outputs."""
    return GraphSpec(spec.name, tuple(i for i in spec.inputs if i.name not in CACHE_INPUTS),
                     tuple(o for o in spec.outputs if o.name not in CACHE_OUTPUTS), spec.stack)


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
    """`resident` (default True): KV caches stay on the GPU and every graph runs in place (module docstring);
    False: `run` only, the session's host caches copied in and out on every call (the path to compare with).
    `transfer` (a TransferCounter) holds the bytes every call moved, per graph and for the last call."""

    name = "trt"

    def __init__(self, source: str | Path | Manifest, precision: str | None = None, check: bool = True,
                 resident: bool = True) -> None:
        self._engines: dict[str, _Engine] = {}
        self._stream = None
        self._resident: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # KVCache -> DeviceCache
        self._scratch = Scratch(cudart)
        self.transfer = TransferCounter()
        # One execution context, its grow-only buffers and the one stream are shared by all callers: two threads
        # in `run` at once would overwrite each other's input shapes, buffers and outputs. Calls are serialized.
        self._lock = threading.Lock()
        self.manifest = source if isinstance(source, Manifest) else Manifest.load(source)
        self.config = self.manifest.config
        self.specs = graph_specs(self.config)
        self.hash_table = self.manifest.open_hash_table()  # gathered on the host; engines take hash_embeds
        self.check = check
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
            self.cache_dtype = self._cache_dtype()
            self.specs = graph_specs(self.config, self.cache_dtype)  # KV caches in the engines' dtype
            for key, engine in self._engines.items():
                engine.bind_spec(self.specs[split_graph_key(key)[0]])
        except Exception:
            self.close()
            raise
        self._host_specs = {graph: _host_spec(spec) for graph, spec in self.specs.items()}
        graphs = frozenset(split_graph_key(key)[0] for key in self._engines)
        self.in_place_graphs = graphs if resident else frozenset()
        # BLT-D's fused commit rows are appended to the cache on the host, which a GPU-resident cache never sees
        self.fused_block_rows = frozenset() if resident else static_fused_rows(self.manifest.block_sizes)

    def _cache_dtype(self) -> str:
        """The engines' one KV-cache dtype name (float32, or float16/bfloat16 in fp16/bf16 bundles)."""
        kinds = {str(e.cache_dtype) for e in self._engines.values() if e.cache_dtype is not None}
        mixed = {e.label: e.cache_types for e in self._engines.values() if e.cache_dtype is None}
        if len(kinds) > 1 or mixed:
            detail = mixed or {e.label: e.cache_types for e in self._engines.values()}
            raise BundleError(f"{self.manifest.root}: the {self.precision} engines' KV-cache tensors differ in dtype "
                              f"({detail}); a session keeps one cache dtype: rebuild every engine from the bundle's "
                              f"{self.precision} ONNX; {REBUILD}")
        return kinds.pop() if kinds else "float32"

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

    def _engine(self, key: str) -> _Engine:
        if self._stream is None:
            raise RuntimeError("this TensorRT backend is closed")
        engine = self._engines.get(key)
        if engine is None:
            raise ValueError(f"no {self.precision} TensorRT engine for {key!r} (engines: {sorted(self._engines)}); "
                             "export the bundle with this block size and rebuild its engines")
        return engine

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every input copied to the device and every output back, caches included."""
        resolve(self.specs, graph, feeds, self.check)
        key = feed_key(graph, feeds)
        with self._lock:
            engine = self._engine(key)
            copies = Copies(cudart, self._stream)
            out = engine.run(feeds, copies, self._handle)
            self.transfer.record(key, copies.now)
            return out

    def run_in_place(self, graph: str, feeds: dict[str, np.ndarray], cache, keep: bool = True) -> dict[str, np.ndarray]:
        """`graph` over `cache`'s entries on the device (a KVCache; the feeds carry no past_key/past_value), its
        new K/V appended there when `keep`; returns the non-cache outputs. The visible window is the cache's
        window before its end, or for decoder_block the `attn_bias` columns before the block's first position."""
        if graph not in self.in_place_graphs:
            raise ValueError(f"backend 'trt' runs {sorted(self.in_place_graphs)} in place, not {graph!r}"
                             + ("" if self.in_place_graphs else " (opened with resident=False: use run)"))
        if isinstance(cache, tuple):
            if len(cache) != 1:
                raise ValueError(f"graph {graph!r} updates one KV cache; got {len(cache)}")
            cache = cache[0]
        if self.check:
            check_feeds(self._host_specs[graph], feeds)
        key = feed_key(graph, feeds)
        with self._lock:
            engine = self._engine(key)
            copies = Copies(cudart, self._stream)
            device = self._device_cache(cache, engine)
            device.sync(cache, copies, self._scratch)
            lo, n = _window(graph, feeds, cache)

            def append(key_ptr: int, value_ptr: int, t: int) -> None:
                cache.reserve(t)  # may compact: the device copy follows before the new rows land
                device.sync(cache, copies, self._scratch)
                device.append((key_ptr, value_ptr), t, copies)
                cache.advance(t)
                device.version = cache.version

            out = engine.run(feeds, copies, self._handle, (device, lo, n), append if keep else None)
            self.transfer.record(key, copies.now)
            return out

    def _device_cache(self, cache, engine: _Engine) -> DeviceCache:
        """The device copy of `cache` (made on its first call, freed when the KVCache goes or the backend
        closes): one per KVCache, so sessions sharing this backend never share a cache."""
        device = self._resident.get(cache)
        if device is None:
            past = next(ts for ts in engine.spec.inputs if ts.name == "past_key").shape
            want, got = (past[0], past[2], past[4]), (cache.k.shape[0], cache.k.shape[2], cache.k.shape[4])
            if want != got:
                raise ValueError(f"{engine.label}: the KV cache has (layers, heads, head dim) {got}, the engine "
                                 f"{want}; a session's caches come from the same config as the engines")
            device = self._resident[cache] = DeviceCache(cache, engine.cache_dtype, cudart)
            device.finalizer = weakref.finalize(cache, device.free)
            device.finalizer.atexit = False  # at exit the driver frees the process's memory
        elif device.dtype != engine.cache_dtype:
            raise BundleError(f"{engine.label}: its KV cache is {engine.cache_dtype}, but this cache is kept on the "
                              f"device in {device.dtype} by another engine; {REBUILD}")
        return device

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.free()
            self._engines = {}
            for device in list(self._resident.values()):
                device.finalizer()  # frees now, and never again when the KVCache goes
            self._resident = weakref.WeakKeyDictionary()
            self._scratch.free()
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
                self._stream = None


def _window(graph: str, feeds: dict[str, np.ndarray], cache) -> tuple[int, int]:
    """Slots (first, count) of the entries the call sees, as `KVCache.visible` would give them: the last
    window-1 before the end, or for decoder_block the attn_bias's cached columns before its first position."""
    if graph == "decoder_block":
        n = feeds["attn_bias"].shape[2] - feeds["states"].shape[1]
        hi = int(feeds["positions"][0, 0]) - cache.start
    else:
        hi = cache.length
        n = hi if cache.window is None else min(hi, cache.window - 1)
    if n < 0 or hi - n < 0 or hi > cache.length or not cache.sees_window_at(cache.start + hi):
        raise ValueError(f"graph {graph!r} reads {n} cache entries before position {cache.start + hi}, but the "
                         f"cache holds {cache.start}..{cache.end - 1}; keep a larger slack")
    return hi - n, n
