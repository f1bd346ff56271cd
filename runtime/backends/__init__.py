"""Backends run one graph at a time: `run(graph, feeds) -> outputs`, numpy in and out.

The scheduler never knows which backend it drives. `check_feeds` validates names, dtypes and ranks against
the graph spec once, here, so every backend reports a bad tensor the same clear way. A backend that lists
graphs in `in_place_graphs` runs them with `run_in_place(graph, feeds, cache, keep)`: it then receives the
session's KVCache for those graphs and updates it itself (ORT's fused CPU layout), instead of taking the
visible entries and returning the new ones. Backends are context managers: leaving `with` closes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from fastblt.graphs.config import BltConfig
from fastblt.graphs.constants import numpy_dtype
from fastblt.graphs.spec import GraphSpec

if TYPE_CHECKING:
    from fastblt.runtime.cache import KVCache
    from fastblt.runtime.hash_table import HashTable

BACKENDS = ("torch", "ort", "trt")


class FeedError(ValueError):
    """A graph input is missing, unexpected, or of the wrong dtype or shape."""


class Backend(Protocol):
    name: str
    config: BltConfig
    specs: dict[str, GraphSpec]
    in_place_graphs: frozenset[str]  # graphs run with run_in_place on the session's cache (empty: none)
    # decoder_block row counts a BLT-D commit's decoder rows may be fused into with its next block (padded
    # up to one of them); None: any count (dynamic shapes); empty: never fused
    fused_block_rows: frozenset[int] | None
    hash_table: HashTable  # the hash n-gram tables the session gathers `hash_embeds` from (runtime/hash_table.py)
    cache_dtype: str  # the KV caches' dtype name (graphs/precisions.py), which the session allocates them in

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def run_in_place(self, graph: str, feeds: dict[str, np.ndarray], cache: KVCache | tuple[KVCache, ...],
                     keep: bool = True) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...


class BackendBase:
    """What the backends share: no in-place graphs unless one lists them, and `with backend:` closing it
    (sessions, engines, streams) however the block ends."""

    name = "backend"
    cache_dtype = "float32"
    in_place_graphs: frozenset[str] = frozenset()
    fused_block_rows: frozenset[int] | None = None

    def run_in_place(self, graph: str, feeds: dict[str, np.ndarray], cache: KVCache | tuple[KVCache, ...],
                     keep: bool = True) -> dict[str, np.ndarray]:
        raise ValueError(f"backend {self.name!r} runs no graph in place (in_place_graphs is empty); use run")

    def close(self) -> None:
        """Release what the backend holds; a closed backend refuses to run."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


FUSE_MAX_ROWS = 8  # on a CPU a padded 16-row decoder_block cost more than an 8-row one plus a decoder_step


def static_fused_rows(block_sizes) -> frozenset[int]:
    """`fused_block_rows` of a backend with one static decoder_block graph or engine per block size
    (docs/architecture.md, "BLT-D's commit rows"; the limit is ONNX Runtime's on a CPU)."""
    return frozenset(b for b in block_sizes if b <= FUSE_MAX_ROWS)


def check_feeds(spec: GraphSpec, feeds: dict[str, np.ndarray]) -> None:
    names = spec.input_names
    if len(feeds) != len(names) or any(n not in feeds for n in names):
        missing = [n for n in names if n not in feeds]
        extra = [n for n in feeds if n not in names]
        raise FeedError(f"graph {spec.name!r}: missing inputs {missing}, unexpected inputs {extra}; "
                        f"expected {list(spec.input_names)}")
    for ts in spec.inputs:
        arr = feeds[ts.name]
        if not isinstance(arr, np.ndarray) or arr.dtype != numpy_dtype(ts.dtype):
            got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise FeedError(f"graph {spec.name!r}: input {ts.name!r} must be a numpy {ts.dtype} array, got {got}")
        if arr.ndim != len(ts.shape):
            raise FeedError(f"graph {spec.name!r}: input {ts.name!r} must have shape {ts.shape} "
                            f"(rank {len(ts.shape)}), got {arr.shape}")
        for axis, (want, got) in enumerate(zip(ts.shape, arr.shape, strict=True)):
            if isinstance(want, int) and want != got:
                raise FeedError(f"graph {spec.name!r}: input {ts.name!r} axis {axis} must be {want} "
                                f"(shape {ts.shape}), got {arr.shape}")


def resolve(specs: dict[str, GraphSpec], graph: str, feeds: dict[str, np.ndarray], check: bool) -> GraphSpec:
    """The spec of `graph`, after validating the feeds against it (every backend's first step)."""
    spec = specs.get(graph)
    if spec is None:
        raise ValueError(f"unknown graph {graph!r}; graphs are {list(specs)}")
    if check:
        check_feeds(spec, feeds)
    return spec


def load_backend(name: str, source, **options) -> Backend:
    """Backend by name over a checkpoint directory (torch) or a bundle from `blt-export build` (ort, trt)."""
    if name == "torch":
        from fastblt.runtime.backends.torch_ref import TorchBackend

        return TorchBackend(source, **options)
    if name == "ort":
        from fastblt.runtime.backends.ort import OrtBackend

        return OrtBackend(source, **options)
    if name == "trt":
        from fastblt.runtime.backends.trt import TensorRTBackend

        return TensorRTBackend(source, **options)
    raise ValueError(f"unknown backend {name!r}; valid backends are {list(BACKENDS)}")
