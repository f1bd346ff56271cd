"""The ONNX Runtime backend: runs a bundle's ONNX graphs (CPU EP here; CUDA/TensorRT EPs when present).

Sessions are tuned for small-batch decoding: sequential execution, full graph optimization (BASIC for FP8
Q/DQ graphs, which ORT's CPU fusions break), and by default one intra-op thread for the byte-level graphs
(tiny ops, where a second thread only adds synchronisation: measured 1.4× slower on 2 cores) but two for
the global transformer, whose weight-bound matmuls gain (measured 1.19 → 0.90 ms per call at 256 patches of
context). Which providers a session really got is checked with `get_providers()`, not
`get_available_providers()`.
"""

from __future__ import annotations

import os

import numpy as np

from fastblt.graphs.spec import graph_specs
from fastblt.runtime.backends import resolve
from fastblt.runtime.manifest import BundleError, Manifest, graph_key

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised only without onnxruntime
    raise ImportError("the ort backend needs onnxruntime: pip install 'fastblt[cpu]' (or 'fastblt[gpu]')") from None

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


class OrtBackend:
    name = "ort"

    def __init__(self, bundle, precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 check: bool = True) -> None:
        if device not in PROVIDERS:
            raise ValueError(f"device {device!r}; valid devices are {list(PROVIDERS)}")
        self.manifest = bundle if isinstance(bundle, Manifest) else Manifest.load(bundle)
        if precision not in self.manifest.precisions:
            raise BundleError(f"{self.manifest.root}: no {precision} graphs in this bundle (it has "
                              f"{self.manifest.precisions}); rebuild with `blt-export build --precision {precision}`")
        self.config = self.manifest.config
        self.specs = graph_specs(self.config)
        self.precision, self.check = precision, check
        self.sessions: dict[str, ort.InferenceSession] = {}
        keys = [graph_key(g) for g in ("patcher", "encoder", "global", "decoder_step")]
        keys += [graph_key("decoder_block", b) for b in self.manifest.block_sizes]
        for key in keys:
            n = threads or (min(2, os.cpu_count() or 1) if key == "global" else 1)
            path = self.manifest.graph_file(key, precision)
            self.sessions[key] = ort.InferenceSession(str(path), _options(n, precision), providers=PROVIDERS[device])
        got = self.sessions["decoder_step"].get_providers()
        if got[0] != PROVIDERS[device][0]:
            raise RuntimeError(f"ONNX Runtime could not use {PROVIDERS[device][0]} (got {got}); install "
                               "onnxruntime-gpu with its CUDA libraries, or use device='cpu'")
        self.providers = got

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = resolve(self.specs, graph, feeds, self.check)
        key = graph_key(graph, feeds["states"].shape[1]) if graph == "decoder_block" else graph
        session = self.sessions.get(key)
        if session is None:
            raise BundleError(f"this bundle has no decoder_block for block size {feeds['states'].shape[1]} "
                              f"(it has {self.manifest.block_sizes}); rebuild with --block-sizes")
        outs = session.run(None, feeds)
        return dict(zip(spec.output_names, outs, strict=True))

    def close(self) -> None:
        self.sessions.clear()


def _options(threads: int, precision: str):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if precision == "fp8"
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    return opts
