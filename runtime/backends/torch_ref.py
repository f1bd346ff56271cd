"""The torch reference backend: runs the graphs/ modules with exactly the ONNX graphs' inputs and outputs.

This is the only door from the runtime into torch (imported lazily by `load_backend`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastblt.graphs.spec import graph_specs
from fastblt.runtime.backends import BackendBase, resolve

try:
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    raise ImportError("the torch backend needs torch: pip install 'fastblt[torch]'") from None


TORCH_DTYPES = ("float32", "bfloat16", "float16")


class TorchBackend(BackendBase):
    name = "torch"

    def __init__(self, source, threads: int | None = None, check: bool = True, hash_table=None,
                 dtype: str = "float32") -> None:
        """`hash_table`: a runtime.hash_table.HashTable to gather from instead of the model's own table (needed
        when the model was loaded with its table left on the meta device, as a large build does). `dtype`
        (float32, bfloat16, float16): the weights' and activations' type; the model's own fp32 islands (norm
        statistics, softmax, RoPE) stay fp32, float inputs are rounded to it and outputs returned as float32
        (a half cache round-trips exactly). This is how bf16 is measured on a CPU, where ONNX Runtime has no
        bf16 kernels; a model passed in is converted in place."""
        from fastblt.graphs import load_model
        from fastblt.graphs.incremental import build_graphs

        if dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype {dtype!r}; valid dtypes are {list(TORCH_DTYPES)}")
        model = source if isinstance(source, torch.nn.Module) else load_model(Path(source))
        self.hash_table = hash_table if hash_table is not None else model_hash_table(model)
        self.dtype = getattr(torch, dtype)
        self.model = model.eval() if dtype == "float32" else model.eval().to(self.dtype)
        self.config = model.config
        self.specs = graph_specs(self.config)
        self.graphs = build_graphs(self.model)
        self.check = check
        if threads:
            torch.set_num_threads(threads)

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = resolve(self.specs, graph, feeds, self.check)
        if not self.graphs:
            raise RuntimeError("this torch backend is closed")
        args = [torch.from_numpy(_writable(feeds[n])) for n in spec.input_names]
        if self.dtype != torch.float32:
            args = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
        with torch.inference_mode():
            outs = self.graphs[graph](*args)
        return {name: (out.float() if out.is_floating_point() else out).numpy()
                for name, out in zip(spec.output_names, outs, strict=True)}

    def close(self) -> None:
        self.graphs = {}


def model_hash_table(model):
    """The model's hash n-gram tables as a host-side HashTable (float32; a view when the weights are fp32)."""
    from fastblt.runtime.hash_table import HashTable

    weight = model.encoder_hash_tok_embedding.weight
    if weight.is_meta:
        raise ValueError("the model's hash tables were not loaded (meta device); pass hash_table= (e.g. a bundle's "
                         "`Manifest.open_hash_table()`)")
    return HashTable.from_array(weight.detach().float().cpu().numpy())


def _writable(arr: np.ndarray) -> np.ndarray:
    """torch.from_numpy shares memory and wants it writable; shared read-only feeds (cached biases) are copied."""
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()
