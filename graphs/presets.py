"""The public BLT shapes as HF `BltConfig` dicts, and a random-init HF checkpoint writer for them.

The dicts are written out (not read from transformers at run time) so fastblt can size, inspect and fake a
BLT-1B or BLT-7B on a machine without transformers, and `init_checkpoint` lets the big-model paths (sharded,
streaming loads; bundles with a 12 GB hash table) be exercised without downloading gated weights. It writes
each tensor chunk by chunk straight into its shard file, so it needs a few chunks of memory, not a model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from fastblt.graphs.atomic import atomic_dir
from fastblt.graphs.checkpoint import (
    CHUNK_BYTES,
    CONFIG_FILE,
    TensorSource,
    _hf_key,
    config_from_hf,
    safetensors_dtype,
    write_shards,
)
from fastblt.graphs.config import BltConfig

GiB = 1 << 30


def _stack(model_type: str, dim: int, layers: int, heads: int, ffn: int, max_positions: int, theta: float,
           **extra: Any) -> dict[str, Any]:
    return {"dropout": 0.0, "hidden_act": "silu", "hidden_size": dim, "initializer_range": 0.02,
            "intermediate_size": ffn, "max_position_embeddings": max_positions, "model_type": model_type,
            "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": heads,
            "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": theta, "rope_type": "default"},
            "tie_word_embeddings": False, **extra}


def _blt(local: int, local_heads: int, local_ffn: int, dec_layers: int, glob: int, glob_heads: int, glob_ffn: int,
         glob_layers: int, k: int, enc_ffn: int) -> dict[str, Any]:
    cross = dict(cross_attn_k=k, hidden_size_global=glob, vocab_size=260)
    return {
        "bos_token_id": None, "cross_attn_k": k,
        "decoder_config": _stack("blt_local_decoder", local, dec_layers, local_heads, local_ffn, 24576, 500000.0,
                                 bos_token_id=None, cross_attn_all_layers=True, eos_token_id=None,
                                 head_dim=local // local_heads, pad_token_id=None, **cross),
        "encoder_config": _stack("blt_local_encoder", local, 1, local_heads, enc_ffn, 24576, 500000.0,
                                 cross_attn_all_layers=False, sliding_window=512, **cross),
        "encoder_hash_byte_group_nb_functions": 1, "encoder_hash_byte_group_size": [3, 4, 5, 6, 7, 8],
        "encoder_hash_byte_group_vocab": 500002, "eos_token_id": None,
        "global_config": _stack("blt_global_transformer", glob, glob_layers, glob_heads, glob_ffn, 4096, 500000.0,
                                encoder_cross_output_size=local * k if local * k != glob else None,
                                head_dim=glob // glob_heads),
        "initializer_range": 0.02, "local_attention_window_len": 512, "max_patch_length": None,
        "max_position_embeddings": 4096, "model_type": "blt", "pad_token_id": None, "patch_in_forward": True,
        "patch_size": 4,
        "patcher_config": _stack("blt_patcher", 768, 14, 12, 2048, 8192, 10000.0, head_dim=64, sliding_window=512,
                                 vocab_size=260),
        "patching_batch_size": 1, "patching_mode": "entropy", "patching_threshold": 1.335442066192627,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "tie_word_embeddings": False,
        "use_cache": True, "vocab_size": 260,
    }


# BLT-1B: exactly what `transformers.BltConfig()` (5.23) serializes to, its defaults being the released 1B.
# One known difference from the converted facebook/blt-1b weights: HF's default encoder FFN is int(8·1024/3) =
# 2730, while the released local encoder rounds up to a multiple of 256 (2816), as every other stack does.
BLT_1B = _blt(local=1024, local_heads=16, local_ffn=2816, dec_layers=9, glob=2048, glob_heads=16, glob_ffn=5632,
              glob_layers=25, k=2, enc_ffn=2730)

# BLT-7B (facebook/blt-7b, the paper's 8B-class BLT, arXiv 2412.09871): local encoder 1 layer and local decoder
# 6 layers of width 1280 (20 heads), global transformer 32 layers × 4096 (32 heads), cross_attn_k 4, so the
# encoder's 4 × 1280 = 5120 pooled width is projected to 4096; patcher and hash tables as in the 1B. FFN widths
# follow BLT's rule (8/3·dim rounded up to 256: 1280 → 3584, 4096 → 11008), as transformers'
# convert_blt_weights_to_hf.py derives them from the released params.json. Source: the config.json of the HF
# conversion of facebook/blt-7b (itazap/blt-7b-hf; the official repo is gated); its 1B sibling's config equals
# the BLT-1B above, which is how these fields were cross-checked.
BLT_7B = _blt(local=1280, local_heads=20, local_ffn=3584, dec_layers=6, glob=4096, glob_heads=32, glob_ffn=11008,
              glob_layers=32, k=4, enc_ffn=3584)

HF_PRESETS = {"blt-1b": BLT_1B, "blt-7b": BLT_7B}


def hf_preset(name: str) -> dict[str, Any]:
    """A copy of the HF config dict of a public shape."""
    if name not in HF_PRESETS:
        raise ValueError(f"unknown preset {name!r}; the public shapes are {sorted(HF_PRESETS)}")
    return copy.deepcopy(HF_PRESETS[name])


def with_diffusion(data: dict[str, Any], block_sizes: tuple[int, ...] = (4, 8, 16)) -> dict[str, Any]:
    """An HF config with BLT-D's MASK and PAD ids (260, 261: two more vocabulary rows) and trained block sizes,
    so a random-init public shape runs all four decoding modes (checkpoint.DIFFUSION_KEY)."""
    from fastblt.graphs.checkpoint import DIFFUSION_KEY

    out = copy.deepcopy(data)
    for sub in (out, *(out[k] for k in ("patcher_config", "encoder_config", "decoder_config") if k in out)):
        if "vocab_size" in sub:
            sub["vocab_size"] = 262
    out[DIFFUSION_KEY] = {"mask_id": 260, "pad_id": 261, "block_sizes": list(block_sizes)}
    return out


def preset_config(name: str) -> BltConfig:
    """The fastblt config of a public shape."""
    return config_from_hf(hf_preset(name), f"preset {name}")


def _initializer(module):
    """How BltModel's own init draws this parameter: RMSNorm ones, embeddings N(0, 1), linear layers
    U(±1/√fan_in) (torch's defaults), so a random checkpoint has a real model's scales."""
    import math

    from torch import nn

    from fastblt.graphs.layers import RMSNorm

    if isinstance(module, RMSNorm):
        return lambda t, g: t.fill_(1.0)
    if isinstance(module, nn.Embedding):
        return lambda t, g: t.normal_(0.0, 1.0, generator=g)
    if isinstance(module, nn.Linear):
        bound = 1.0 / math.sqrt(module.in_features)
        return lambda t, g: t.uniform_(-bound, bound, generator=g)
    return lambda t, g: t.normal_(0.0, 0.02, generator=g)


def init_checkpoint(out: str | Path, preset: str | dict[str, Any], dtype: Any = None, shard_bytes: int = 2 * GiB,
                    seed: int = 0) -> Path:
    """Write a randomly initialised HF-format BLT (config.json + safetensors shards + index, HF key names)
    atomically. `preset` is a name in HF_PRESETS or an HF BltConfig dict; dtype defaults to bfloat16. Each
    tensor is drawn chunk by chunk into its shard file: memory stays at a few chunks whatever the model size."""
    import torch

    from fastblt.graphs.model import BltModel

    data = hf_preset(preset) if isinstance(preset, str) else copy.deepcopy(preset)
    source = f"preset {preset}" if isinstance(preset, str) else "preset config"
    cfg = config_from_hf(data, source)
    dtype = torch.bfloat16 if dtype is None else dtype
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"dtype={dtype} must be torch.bfloat16, float16 or float32")
    if not (isinstance(shard_bytes, int) and shard_bytes > 0):
        raise ValueError(f"shard_bytes={shard_bytes!r} must be a positive number of bytes")
    with torch.device("meta"):
        model = BltModel(cfg)  # names and shapes only: no memory
    gen = torch.Generator().manual_seed(seed)
    sources = []
    for name, param in model.state_dict().items():
        draw = _initializer(model.get_submodule(name.rpartition(".")[0]))
        sources.append(TensorSource(_hf_key(name), safetensors_dtype(dtype), tuple(param.shape),
                                    _random_chunks(tuple(param.shape), dtype, draw, gen)))
    data["dtype"] = str(dtype).removeprefix("torch.")
    data.setdefault("architectures", ["BltForCausalLM"])
    dest = Path(out)
    with atomic_dir(dest) as tmp:
        write_shards(tmp, sources, shard_bytes)
        (tmp / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return dest


def _random_chunks(shape: tuple[int, ...], dtype, draw, gen):
    import math

    import torch

    def chunks():
        rows = shape[0] if shape else 1
        row = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        step = max(1, CHUNK_BYTES // max(1, row))
        for r0 in range(0, rows, step):
            t = torch.empty((min(step, rows - r0), *shape[1:]) if shape else (), dtype=dtype)
            yield draw(t, gen)
    return chunks
