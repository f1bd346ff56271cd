"""Export a fastblt `BltModel` as a Hugging Face `transformers` BLT directory (the inverse of the HF importer).

The directory holds `config.json` (an HF `BltConfig`, `model_type: "blt"`) and `model.safetensors` (fp32, every
tensor under `model.` except the top-level `lm_head.weight`), so `transformers.BltForCausalLM.from_pretrained`
and fastblt's own `load_model` both read it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastblt.graphs.atomic import atomic_dir
from fastblt.graphs.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from fastblt.graphs.config import BltConfig, TransformerConfig
from fastblt.graphs.constants import BYTE_VOCAB

# Matrices with one row per token id (MASK/PAD rows sit at ids ≥ 260).
VOCAB_KEYS = ("patcher.embed_tokens.weight", "patcher.lm_head.weight", "local_encoder.embed_tokens.weight",
              "lm_head.weight")


def _stack(c: TransformerConfig, vocab_size: int | None = None, **extra: Any) -> dict[str, Any]:
    sub = {
        "hidden_size": c.dim, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads, "intermediate_size": c.hidden, "rms_norm_eps": c.norm_eps,
        "max_position_embeddings": c.max_positions, "hidden_act": "silu", "dropout": 0.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(c.rope_theta)},
    }
    if vocab_size is not None:
        sub["vocab_size"] = vocab_size
    return {**sub, **extra}


def hf_config(cfg: BltConfig, vocab_size: int, max_patch_length: int | None) -> dict[str, Any]:
    """The HF `BltConfig` dict for `cfg`. Every field the HF model or `config_from_hf` reads is written
    explicitly, because HF's defaults differ from fastblt's (e.g. the patcher's sliding_window defaults to 512)."""
    if cfg.encoder.window != cfg.decoder.window:
        raise ValueError(f"encoder.window={cfg.encoder.window} and decoder.window={cfg.decoder.window} differ; "
                         "an HF BLT has one local_attention_window_len for both")
    if cfg.global_transformer.window is not None:
        raise ValueError(f"global_transformer.window={cfg.global_transformer.window}: an HF BLT's global "
                         "transformer has no sliding window")
    glob, k = cfg.global_transformer.dim, cfg.cross_attn_k
    local = dict(cross_attn_k=k, hidden_size_global=glob)
    return {
        "model_type": "blt",
        "architectures": ["BltForCausalLM"],
        "dtype": "float32",
        "vocab_size": vocab_size,
        "max_position_embeddings": cfg.global_transformer.max_positions,
        "patch_in_forward": True,
        "patch_size": 4,  # any non-null value switches HF to entropy patching; its value is unused
        "patching_mode": "entropy",
        "patching_threshold": float(cfg.patch_threshold),
        "patching_batch_size": 1,
        "max_patch_length": max_patch_length,
        "local_attention_window_len": cfg.encoder.window,
        "cross_attn_k": k,
        "encoder_hash_byte_group_size": list(cfg.hash_sizes),
        "encoder_hash_byte_group_vocab": cfg.hash_vocab,
        "encoder_hash_byte_group_nb_functions": cfg.hash_functions,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": None,
        # transformers' KV-cache path for BLT (5.x) needs a top-level num_hidden_layers that HF's own converter
        # does not write either, and with one it runs but its cached greedy bytes differ from its uncached ones
        # (and from fastblt's): without a cache, `model(ids)` and `generate()` compute the exported model.
        "use_cache": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.global_transformer.rope_theta)},
        "patcher_config": _stack(cfg.patcher, vocab_size, model_type="blt_patcher",
                                 sliding_window=cfg.patcher.window),
        "encoder_config": _stack(cfg.encoder, vocab_size, model_type="blt_local_encoder",
                                 cross_attn_all_layers=False, sliding_window=cfg.encoder.window, **local),
        "global_config": _stack(cfg.global_transformer, model_type="blt_global_transformer"),
        "decoder_config": _stack(cfg.decoder, vocab_size, model_type="blt_local_decoder",
                                 cross_attn_all_layers=cfg.decoder_cross_attn_all_layers, **local),
    }


def save_hf(model, path: str | Path, *, drop_special_rows: bool = True, max_patch_length: str | None = "keep") -> Path:
    """Write `model` as an HF BLT checkpoint directory, atomically (temp directory next to `path`, then rename).

    drop_special_rows: a BLT-D model (vocab 262) carries MASK/PAD rows at ids ≥ 260. fastblt's patcher takes its
        entropy over the first 260 columns only, but stock HF takes it over all vocab columns, so kept rows would
        move HF's patch boundaries. Dropping them (and writing vocab_size 260) gives HF the identical model for
        autoregressive bytes; only the diffusion inputs MASK/PAD, which HF cannot use anyway, are lost.
    max_patch_length: "keep" writes the model's cap, so `load_model` gets the same model back. None writes no
        cap: with a cap, HF's forward ignores the boundary the next byte brings at the last position (see
        docs/architecture.md), so its last-row logits — the ones greedy decoding reads — can differ from
        fastblt's. Without a cap, HF and fastblt reading this directory agree on every row.

    The BLT-D fields (mask_id, pad_id, block_sizes) have no HF equivalent and are not written.
    """
    import torch
    from safetensors.torch import save_file

    from fastblt.graphs.model import BltModel

    if not isinstance(model, BltModel):
        raise ValueError(f"save_hf needs a fastblt BltModel, got {type(model).__name__}")
    if max_patch_length not in ("keep", None):
        raise ValueError(f"max_patch_length={max_patch_length!r} must be 'keep' or None")
    dest = Path(path)
    if dest.is_file():
        raise ValueError(f"{dest} is a file; pass a directory to write ({CONFIG_FILE} + {WEIGHTS_FILE})")
    cfg = model.config
    vocab = BYTE_VOCAB if drop_special_rows else cfg.vocab_size
    config = hf_config(cfg, vocab, cfg.max_patch_length if max_patch_length == "keep" else None)
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to(torch.float32)
        if name in VOCAB_KEYS:
            tensor = tensor[:vocab]
        tensors[name if name == "lm_head.weight" else "model." + name] = tensor.contiguous().clone()

    with atomic_dir(dest) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "producer": "fastblt"})
        os.chmod(tmp / WEIGHTS_FILE, 0o644)  # safetensors creates it 0600; an export is meant to be shared
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return dest
