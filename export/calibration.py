"""Real-text inputs for calibration and validation, and held-out quality metrics of any backend.

A recording backend wraps the torch reference while the runtime generates from held-out text in every mode,
so each graph's calibration set is exactly the tensors it sees in deployment.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from fastblt.graphs.constants import feed_key
from fastblt.runtime.backends import BackendBase
from fastblt.runtime.generator import Generator
from fastblt.runtime.host import decode_bytes
from fastblt.runtime.session import Session
from fastblt.runtime.unmask import UnmaskConfig

RECORD_BYTES = 256 << 20  # per graph file: at BLT-1B scale one global call's cache is tens of MB


class RecordingBackend(BackendBase):
    """Delegates to a backend and keeps (feeds, outputs) of up to `limit` calls and `max_bytes` per graph file."""

    def __init__(self, inner, limit: int = 64, max_bytes: int = RECORD_BYTES) -> None:
        self.inner, self.limit, self.max_bytes = inner, limit, max_bytes
        self.name, self.config, self.specs = "recording", inner.config, inner.specs
        self.hash_table = inner.hash_table
        self.cache_dtype = inner.cache_dtype
        self.fused_block_rows = inner.fused_block_rows  # record the calls the inner backend would get
        self.records: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
        self.bytes: dict[str, int] = defaultdict(int)

    def run(self, graph, feeds):
        out = self.inner.run(graph, feeds)
        key = feed_key(graph, feeds)
        size = sum(v.nbytes for v in feeds.values()) + sum(v.nbytes for v in out.values())
        if len(self.records[key]) < self.limit and self.bytes[key] + size <= self.max_bytes:
            self.records[key].append(({k: v.copy() for k, v in feeds.items()}, {k: v.copy() for k, v in out.items()}))
            self.bytes[key] += size
        return out

    def close(self) -> None:
        self.inner.close()


def record(backend, prompts: list[bytes], new_bytes: int = 48, limit: int = 64, progress=None) -> RecordingBackend:
    """Run every mode the model supports over the prompts, recording each graph's real inputs (`progress()` is
    called after each prompt)."""
    rec = RecordingBackend(backend, limit)
    gen = Generator(rec)
    # a bundle's backend runs the block sizes its manifest lists (a build with --block-sizes may hold fewer
    # than the model was trained for); the torch reference runs every trained one
    manifest = getattr(backend, "manifest", None)
    blocks = backend.config.block_sizes if manifest is None else manifest.block_sizes
    for prompt in prompts:
        gen.generate(prompt, mode="ar", max_new_bytes=new_bytes)
        gen.generate(prompt, mode="blts", max_new_bytes=new_bytes, draft_k=4)
        for block in blocks:
            gen.generate(prompt, mode="bltd", max_new_bytes=new_bytes, block_size=block,
                         unmask=UnmaskConfig("confidence", alpha=0.5))
        if progress is not None:
            progress()
    return rec


def heldout_bpb(backend, windows: list[list[int]], progress=None) -> float:
    """Next-byte bits per byte of the runtime's own logits (exactly what generation samples from); `progress()`
    is called after each window."""
    total, count = 0.0, 0
    for ids in windows:
        if len(ids) < 2:
            continue
        logits = Session(backend).commit(ids[:-1]).astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
        if progress is not None:
            progress()
    return total / max(count, 1) / math.log(2)


def greedy_texts(backend, prompts: list[bytes], new_bytes: int = 64, progress=None) -> list[bytes]:
    """Each prompt's greedy continuation (`progress()` after each)."""
    gen, out = Generator(backend), []
    for prompt in prompts:
        out.append(gen.generate(prompt, max_new_bytes=new_bytes).bytes)
        if progress is not None:
            progress()
    return out


def agreement(reference: list[bytes], other: list[bytes], new_bytes: int = 64) -> dict:
    """Fraction of continuations that are byte-identical, and the mean shared prefix."""
    same = sum(a == b for a, b in zip(reference, other, strict=True))
    prefix = [next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
              for a, b in zip(reference, other, strict=True)]
    return {"identical": same / max(len(reference), 1), "mean_shared_prefix_bytes": float(np.mean(prefix or [0])),
            "prompts": len(reference), "new_bytes": new_bytes}


def greedy_agreement(reference, other, prompts: list[bytes], new_bytes: int = 64, progress=None) -> dict:
    """Fraction of prompts whose greedy continuation is byte-identical, and the mean shared prefix. `reference`
    is a backend, or its continuations already generated (a large build never holds two backends at once)."""
    ref = reference if isinstance(reference, list) else greedy_texts(reference, prompts, new_bytes)
    return agreement(ref, greedy_texts(other, prompts, new_bytes, progress), new_bytes)


def prompts_from(windows: list[list[int]], n: int, length: int = 96) -> list[bytes]:
    return [decode_bytes(w[1:length + 1]) for w in windows[:n]]
