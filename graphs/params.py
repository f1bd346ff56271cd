"""Parameter counts per component, from the config alone (torch-free), for inspection and the
bandwidth counters. Hash-embedding tables are counted apart: they are lookups, not matmul weights."""

from __future__ import annotations

from fastblt.graphs.config import BltConfig, TransformerConfig


def _stack(c: TransformerConfig) -> int:
    attn = c.dim * c.n_heads * c.head_dim * 2 + c.dim * c.kv_heads * c.head_dim * 2
    return c.n_layers * (attn + 3 * c.dim * c.hidden + 2 * c.dim)


def _cross(c: TransformerConfig) -> int:
    return c.dim * c.n_heads * c.head_dim * 2 + c.dim * c.kv_heads * c.head_dim * 2 + 2 * c.dim


def param_counts(cfg: BltConfig) -> dict[str, int]:
    d, k, g = cfg.encoder.dim, cfg.cross_attn_k, cfg.global_transformer.dim
    n_cross = cfg.decoder.n_layers if cfg.decoder_cross_attn_all_layers else 1
    glob_proj = d * k * g if d * k != g else 0
    return {
        "patcher": cfg.vocab_size * cfg.patcher.dim * 2 + _stack(cfg.patcher) + cfg.patcher.dim,
        "encoder": cfg.vocab_size * d + _stack(cfg.encoder) + d * d * k + _cross(cfg.encoder),
        "hash_embeddings": cfg.n_hash_tables * cfg.hash_vocab * d,
        "global": _stack(cfg.global_transformer) + glob_proj,
        "decoder": _stack(cfg.decoder) + n_cross * _cross(cfg.decoder) + g * d * k + d + d * cfg.vocab_size,
    }
