"""Constants graphs, export and runtime share (no torch, no numpy): vocabulary ids, hash primes, limits, keys.

Both sides of the torch boundary import these from here, so `fastblt.graphs` never needs `fastblt.runtime`
and a value is written down once.
"""

from __future__ import annotations

import functools

# Vocabulary: byte b has id b + OFFSET; ids below OFFSET are the BLT specials.
BOE, BOS, EOS, BPE_DELIM = 0, 1, 2, 3
OFFSET = 4
BYTE_VOCAB = 260  # 256 byte values + BOE/BOS/EOS/BPE-delimiter
MASK_ID, PAD_ID = 260, 261  # the ids BLT-D adds above the byte vocabulary when a model has none
DIFFUSION_VOCAB = 262  # smallest vocabulary that holds MASK_ID and PAD_ID

# Hash n-gram embeddings: hash function f uses HASH_PRIMES[f] (rolling polynomial, wrapping int64).
HASH_PRIMES = (
    1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899,
    9576890767, 3628273133, 2860486313, 5463458053, 3367900313,
)

# Limits the graphs' shapes and the runtime's caches agree on.
MAX_CHUNK = 512  # most new bytes one patcher/encoder/decoder_step call takes (prefill is chunked to this)
ROLLBACK_SLACK = 64  # cache entries kept beyond the local window so drafts can be rolled back

# Tensor dtypes a graph spec may name; each is also its numpy dtype's name (numpy_dtype(name); bfloat16 is
# ml_dtypes' type, which onnx installs)
TENSOR_DTYPES = ("int64", "int32", "float32", "bool", "float16", "bfloat16")


@functools.cache  # read on every graph call's feed check
def numpy_dtype(name: str):
    """The numpy dtype of a spec dtype name (bfloat16 through ml_dtypes, imported only when asked)."""
    import numpy as np

    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def graph_key(graph: str, block_size: int | None = None) -> str:
    """Bundle key of a graph file: decoder_block is exported once per static block size."""
    return f"{graph}_{block_size}" if graph == "decoder_block" else graph


def split_graph_key(key: str) -> tuple[str, int | None]:
    """Inverse of `graph_key`: "decoder_block_8" -> ("decoder_block", 8)."""
    if key.startswith("decoder_block_"):
        return "decoder_block", int(key.removeprefix("decoder_block_"))
    return key, None


def feed_key(graph: str, feeds: dict) -> str:
    """Bundle key of the graph a call runs: a decoder_block call's block size is its `states` width."""
    return graph_key(graph, feeds["states"].shape[1]) if graph == "decoder_block" else graph


def fused_key(graph: str) -> str:
    """Bundle key of a graph's fused-layout file (ONNX Runtime CPU only; graphs/incremental/fused.py)."""
    return f"fused_{graph}"
