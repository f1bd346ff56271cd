"""The ONNX Runtime backend: runs a bundle's ONNX graphs (CPU EP here; CUDA/TensorRT EPs when present).

Sessions are tuned for small-batch decoding: sequential execution, full graph optimization (BASIC for FP8
Q/DQ graphs, which ORT's CPU fusions break), and by default one intra-op thread for the byte-level graphs
(tiny ops, where a second thread only adds synchronisation) but two for the global transformer, whose
weight-bound matmuls gain (measurements in docs/architecture.md). Which providers a session really got is
checked with `get_providers()`, not `get_available_providers()`.

On CPU, bundles carry a second, fused layout of patcher/encoder/global/decoder_step (one GroupQueryAttention
per layer over a cache updated in place, see graphs/incremental/fused.py) and draft_step (encoder +
decoder_step in one call, for BLT-S); `layout="auto"` uses it when the bundle has it for the precision, and the
session then hands those graphs its caches (`run_in_place`).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from fastblt.graphs.constants import feed_key, fused_key, graph_key
from fastblt.graphs.precisions import PRECISIONS, PrecisionUnknown, cache_dtype
from fastblt.graphs.precisions import precision as precision_info
from fastblt.graphs.spec import FUSED_GRAPHS, FUSED_OPTIONAL, fused_graph_specs, graph_specs
from fastblt.runtime.backends import BackendBase, resolve, static_fused_rows
from fastblt.runtime.manifest import BundleError, Manifest

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised only without onnxruntime
    raise ImportError("the ort backend needs onnxruntime: pip install 'fastblt[cpu]' (or 'fastblt[gpu]')") from None

LAYOUTS = ("auto", "fused", "standard")
PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


class OrtBackend(BackendBase):
    name = "ort"

    def __init__(self, bundle, precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 check: bool = True, layout: str = "auto") -> None:
        if device not in PROVIDERS:
            raise ValueError(f"device {device!r}; valid devices are {list(PROVIDERS)}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}; valid layouts are {list(LAYOUTS)}")
        self.manifest = bundle if isinstance(bundle, Manifest) else Manifest.load(bundle)
        _check_device(self.manifest, precision, device)
        if precision not in self.manifest.precisions:
            raise BundleError(f"{self.manifest.root}: no {precision} graphs in this bundle (it has "
                              f"{list(self.manifest.precisions)}); rebuild with "
                              f"`blt-export build --precision {precision}`")
        self.config = self.manifest.config
        self.cache_dtype = cache_dtype(precision)
        self.specs = graph_specs(self.config, self.cache_dtype)
        self.precision, self.check = precision, check
        self.hash_table = self.manifest.open_hash_table()
        self.fused_block_rows = static_fused_rows(self.manifest.block_sizes)
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.layout = self._pick_layout(layout, precision, device)
        fused = self._fused_graphs(precision) if self.layout == "fused" else []

        def session(key: str, graph: str) -> ort.InferenceSession:
            path = self.manifest.graph_file(key, precision)
            weight_bytes = self.manifest.file_entry(key, precision).total_bytes
            n = threads or _threads(graph, weight_bytes)
            no_prepack = precision == "fp32" and weight_bytes > BIG_GRAPH_BYTES
            return ort.InferenceSession(str(path), _options(n, precision, no_prepack, weight_bytes > BIG_GRAPH_BYTES),
                                        providers=PROVIDERS[device])

        # one layout per graph: the standard file only where no fused one replaces it (decoder_block always)
        keys = [graph_key(g) for g in ("patcher", "encoder", "global", "decoder_step") if g not in fused]
        keys += [graph_key("decoder_block", b) for b in self.manifest.block_sizes]
        for key in keys:
            self.sessions[key] = session(key, key)
        self._in_place = {}
        if fused:
            from fastblt.runtime.backends.ort_inplace import InPlaceGraph

            fused_specs = fused_graph_specs(self.config, self.cache_dtype)
            try:
                self._in_place = {g: InPlaceGraph(session(fused_key(g), g), fused_specs[g]) for g in fused}
            except ort_errors() as e:  # an ONNX Runtime without these contrib-op inputs (e.g. GQA position_ids)
                message = (f"onnxruntime {ort.__version__} cannot load this bundle's fused CPU graphs ({e}); "
                           "upgrade it (`pip install -U onnxruntime`; the layout is verified on 1.32) or use "
                           "layout='standard'")
                if layout == "fused":
                    raise BundleError(message) from None
                warnings.warn(message + "; using the standard graphs", RuntimeWarning, stacklevel=2)
                self.layout = "standard"
                for g in fused:
                    if g in FUSED_GRAPHS:
                        self.sessions[graph_key(g)] = session(graph_key(g), g)
        self.in_place_graphs = frozenset(self._in_place)
        first = next(iter(self.sessions.values()), None) or next(iter(self._in_place.values())).session
        got = first.get_providers()
        if got[0] != PROVIDERS[device][0]:
            raise RuntimeError(f"ONNX Runtime could not use {PROVIDERS[device][0]} (got {got}); install "
                               "onnxruntime-gpu with its CUDA libraries, or use device='cpu'")
        self.providers = got

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = resolve(self.specs, graph, feeds, self.check)
        key = feed_key(graph, feeds)
        session = self.sessions.get(key)
        if not self.sessions:
            raise RuntimeError("this ONNX Runtime backend is closed")
        if session is None and graph in self._in_place:
            raise ValueError(f"graph {graph!r} runs in place in the fused layout (run_in_place); open the backend "
                             "with layout='standard' to call it with run")
        if session is None:
            size = feeds["states"].shape[1]
            raise BundleError(f"this bundle has no decoder_block for block size {size} (it has "
                              f"{list(self.manifest.block_sizes)}): use one of those block sizes, or rebuild the "
                              f"bundle with `blt-export build --block-sizes` listing {size}")
        outs = session.run(None, feeds)
        return dict(zip(spec.output_names, outs, strict=True))

    def run_in_place(self, graph: str, feeds: dict[str, np.ndarray], cache, keep: bool = True) -> dict[str, np.ndarray]:
        """Run a fused graph on `cache` (a runtime.cache.KVCache; draft_step: the encoder's and the decoder's)
        directly; with keep the new entries count as cached, without (scratch calls) they are written past its
        end and ignored."""
        if graph not in self._in_place:
            raise RuntimeError(f"graph {graph!r} does not run in place here (closed backend, or not a fused graph: "
                               f"in_place_graphs is {sorted(self.in_place_graphs)})")
        return self._in_place[graph].run(feeds, cache, keep, self.check)

    def _fused_graphs(self, precision: str) -> list[str]:
        """The graphs this bundle has in the fused layout for `precision` (a graph whose weights are in external
        data has only its standard file; its stack then runs the standard graph)."""
        return [g for g in (*FUSED_GRAPHS, *FUSED_OPTIONAL) if self.manifest.has_file(fused_key(g), precision)]

    def _pick_layout(self, layout: str, precision: str, device: str) -> str:
        has = bool(self._fused_graphs(precision))
        if layout == "fused" and (device != "cpu" or not has):
            raise BundleError(f"{self.manifest.root}: no fused {precision} graphs for device {device!r} (the fused "
                              "layout is for ONNX Runtime on CPU; `blt-export build` writes it for fp32 and "
                              "int8-dynamic); use layout='standard'")
        if layout == "auto":
            return "fused" if device == "cpu" and has else "standard"
        return layout

    def close(self) -> None:
        self.sessions.clear()
        self._in_place = {}
        self.in_place_graphs = frozenset()


def _check_device(manifest: Manifest, precision: str, device: str) -> None:
    """A precision ONNX Runtime's CPU provider has no kernels for (bf16) is one clear error naming the bundle's
    precisions that would run, before any session is created."""
    try:
        info = precision_info(precision)
    except PrecisionUnknown as exc:
        raise BundleError(f"{exc}; this bundle has {list(manifest.precisions)}") from None
    if device == "cpu" and not info.cpu:
        usable = [p for p in manifest.precisions if p in PRECISIONS and PRECISIONS[p].cpu]
        raise BundleError(f"{precision} does not run on ONNX Runtime's CPU provider (it has no {precision} kernels); "
                          f"on this CPU use one of {usable} from this bundle, or run {precision} on a GPU "
                          f"(device='cuda', or the trt backend)")


def ort_errors() -> tuple[type[Exception], ...]:
    """What InferenceSession raises for a graph this ONNX Runtime cannot load."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.Fail, state.InvalidGraph, state.InvalidArgument, state.NotImplemented)


BIG_GRAPH_BYTES = 64 << 20


def _threads(graph: str, weight_bytes: int) -> int:
    """Intra-op threads: every core for a graph whose weights make its matmuls the cost (BLT-1B's global
    model, 5 GB; any graph over 64 MB), two for the global model at small scale, one for the byte-level graphs,
    whose tiny ops only pay synchronisation for a second thread (docs/architecture.md)."""
    cores = os.cpu_count() or 1
    if weight_bytes > BIG_GRAPH_BYTES:
        return cores
    return min(2, cores) if graph == "global" else 1


def _options(threads: int, precision: str, no_prepack: bool = False, no_spin: bool = False):
    """`no_prepack` (large fp32 graphs): MLAS does not repack the weights at load. Measured on BLT-1B's global
    graph (docs/scale.md): fp32 loads in 0.1 s instead of 11 s at the same speed per call (181 vs 194 ms);
    MatMulNBits (int8-dynamic) needs its packing (70 ms per call with it, 3.9 s without), so it keeps it.
    `no_spin` (graphs over 64 MB, which use every core): the session's pool threads sleep after a call instead
    of spinning. Each session has its own pool, so spinning threads of the last graph took the cores from the
    next one: at BLT-1B int4, AR went from 7.1 to 13.8 bytes/s and the global call from 73 to 40 ms. Small
    graphs keep spinning (on the default model, where none is that large, two runs each way were within noise)."""
    opts = ort.SessionOptions()
    if no_prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.intra_op_num_threads = threads
    if no_spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if precision == "fp8"
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    return opts
