"""Torch-free specs of the five graphs: input/output names, dtypes and symbolic shapes.

Export, validation, engine build and every runtime backend read these, so a graph's interface is written
down exactly once. Symbolic dims: b batch, t new tokens, T cached tokens, P patches, L bytes per patch,
B block size, D local width, K cross_attn_k slots, V vocab, and per stack n layers, h kv
heads, d head dim.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from fastblt.graphs.config import BltConfig, TransformerConfig
from fastblt.graphs.constants import MAX_CHUNK, ROLLBACK_SLACK


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # one of constants.TENSOR_DTYPES
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    stack: str  # which TransformerConfig owns the KV cache

    @functools.cached_property  # read on every graph call
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @functools.cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)


def graph_specs(cfg: BltConfig, cache_dtype: str = "float32") -> dict[str, GraphSpec]:
    """`cache_dtype`: the KV caches' dtype (graphs/precisions.py: half in the fp16/bf16 graphs); every other
    float input and output is float32 in every precision."""
    d, k, v = cfg.encoder.dim, cfg.cross_attn_k, cfg.vocab_size

    def _cache(sub: TransformerConfig, prefix: str, length: str) -> tuple[TensorSpec, TensorSpec]:
        shape = (sub.n_layers, "b", sub.kv_heads, length, sub.head_dim)
        return TensorSpec(f"{prefix}_key", cache_dtype, shape), TensorSpec(f"{prefix}_value", cache_dtype, shape)

    ids = TensorSpec("ids", "int64", ("b", "t"))
    pos = TensorSpec("positions", "int64", ("b", "t"))
    return {
        "patcher": GraphSpec(
            "patcher",
            (ids, pos, *_cache(cfg.patcher, "past", "T")),
            (TensorSpec("entropies", "float32", ("b", "t")), *_cache(cfg.patcher, "new", "t")),
            "patcher",
        ),
        "encoder": GraphSpec(
            "encoder",
            (ids, TensorSpec("hash_embeds", "float32", ("b", "t", d)), pos, *_cache(cfg.encoder, "past", "T")),
            (TensorSpec("states", "float32", ("b", "t", d)), *_cache(cfg.encoder, "new", "t")),
            "encoder",
        ),
        "global": GraphSpec(
            "global",
            (
                TensorSpec("patch_states", "float32", ("b", "P", "L", d)),
                TensorSpec("patch_mask", "bool", ("b", "P", "L")),
                TensorSpec("patch_positions", "int64", ("b", "P")),
                *_cache(cfg.global_transformer, "past", "T"),
            ),
            (TensorSpec("memory", "float32", ("b", "P", k, d)), *_cache(cfg.global_transformer, "new", "P")),
            "global_transformer",
        ),
        "decoder_step": GraphSpec(
            "decoder_step",
            (
                TensorSpec("states", "float32", ("b", "t", d)),
                pos,
                TensorSpec("memory", "float32", ("b", "t", k, d)),
                *_cache(cfg.decoder, "past", "T"),
            ),
            (TensorSpec("logits", "float32", ("b", "t", v)), *_cache(cfg.decoder, "new", "t")),
            "decoder",
        ),
        "decoder_block": GraphSpec(
            "decoder_block",
            (
                TensorSpec("states", "float32", ("b", "B", d)),
                TensorSpec("positions", "int64", ("b", "B")),
                TensorSpec("memory", "float32", ("b", "B", k, d)),
                TensorSpec("attn_bias", "float32", ("b", "B", "T+B")),
                *_cache(cfg.decoder, "past", "T"),
            ),
            (TensorSpec("logits", "float32", ("b", "B", v)), *_cache(cfg.decoder, "block", "B")),
            "decoder",
        ),
    }


GRAPH_NAMES = ("patcher", "encoder", "global", "decoder_step", "decoder_block")
FUSED_GRAPHS = ("patcher", "encoder", "global", "decoder_step")  # decoder_block: arbitrary bias, standard only
# Fused graphs a bundle may lack (the runtime then makes the calls they replace): draft_step is encoder +
# decoder_step in one call, BLT-S's drafting step.
FUSED_OPTIONAL = ("draft_step",)
SECOND_CACHE = "decoder_"  # name prefix of draft_step's decoder cache inputs, outputs and past_length


def fused_graph_specs(cfg: BltConfig, cache_dtype: str = "float32") -> dict[str, GraphSpec]:
    """The fused layout (graphs/incremental/fused.py): the standard inputs minus the stacked cache, plus
    `past_length` [1] (int32) and one cache buffer per layer [1, h_kv, C, d] in and (updated in place) out.
    Batch is 1: ORT's GroupQueryAttention takes several new rows over a cache only for a single sequence.

    draft_step chains the encoder and decoder_step at the same positions: the encoder's inputs plus the
    decoder's `memory`, both outputs (`states` for reuse, `logits`), the encoder cache as above and the
    decoder's under the prefix `decoder_` (its own `decoder_past_length`: the two caches fill differently)."""
    def one(t: TensorSpec) -> TensorSpec:
        return TensorSpec(t.name, t.dtype, tuple(1 if d == "b" else d for d in t.shape))

    def caches(sub: TransformerConfig, prefix: str = "") -> tuple[list[TensorSpec], list[TensorSpec]]:
        shape = (1, sub.kv_heads, "C", sub.head_dim)
        slots = [f"{part}_{i}" for i in range(sub.n_layers) for part in ("key", "value")]
        return ([TensorSpec(f"{prefix}past_{s}", cache_dtype, shape) for s in slots],
                [TensorSpec(f"{prefix}present_{s}", cache_dtype, shape) for s in slots])

    length = TensorSpec("past_length", "int32", (1,))
    out = {}
    for name, spec in graph_specs(cfg, cache_dtype).items():
        if name not in FUSED_GRAPHS:
            continue
        past, present = caches(getattr(cfg, spec.stack))
        plain = tuple(one(i) for i in spec.inputs if not i.name.startswith("past_"))
        outputs = tuple(one(o) for o in spec.outputs if not o.name.startswith("new_"))
        out[name] = GraphSpec(name, (*plain, length, *past), (*outputs, *present), spec.stack)
    enc, dec = out["encoder"], out["decoder_step"]
    dec_past, dec_present = caches(cfg.decoder, SECOND_CACHE)
    inputs = (*enc.inputs[:3], dec.inputs[2], TensorSpec(f"{SECOND_CACHE}past_length", "int32", (1,)), length)
    out["draft_step"] = GraphSpec("draft_step", (*inputs, *enc.inputs[4:], *dec_past),
                                  (enc.outputs[0], dec.outputs[0], *enc.outputs[1:], *dec_present), "encoder")
    return out


# A model without max_patch_length (HF's BLT-1B config) could close a patch of any length; a bundle records this
# cap in its model config instead, so every backend closes a patch at the same byte and the TensorRT profile's
# patch-length axis covers every patch (docs/scale.md: what it changes against HF).
PATCH_CAP = 128


def dim_ranges(cfg: BltConfig, block_size: int | None = None) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of every symbolic dim, shared by export (dynamic shapes), validation (sample sizes)
    and TensorRT optimization profiles. "T" is the cache length of the graph's own stack."""
    def cache(sub: TransformerConfig) -> tuple[int, int, int]:
        if sub.window is None:
            return (0, 256, sub.max_positions)
        return (0, sub.window - 1, sub.window - 1 + ROLLBACK_SLACK)

    longest = cfg.max_patch_length or PATCH_CAP
    ranges = {
        "b": (1, 1, 1),
        "t": (1, 1, MAX_CHUNK),
        "P": (1, 1, max(1, MAX_CHUNK // 1)),
        "L": (1, min(4, longest), max(longest, 1)),
        "T:patcher": cache(cfg.patcher),
        "T:encoder": cache(cfg.encoder),
        "T:global_transformer": (0, 64, cfg.global_transformer.max_positions - 1),
        "T:decoder": cache(cfg.decoder),
    }
    if block_size is not None:
        ranges["B"] = (block_size, block_size, block_size)
    return ranges
