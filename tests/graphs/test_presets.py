"""Public BLT shapes (HF config dicts) and the chunked random-init HF checkpoint writer."""

from __future__ import annotations

import json

import pytest
import torch

from fastblt.graphs import load_model
from fastblt.graphs.checkpoint import config_from_hf
from fastblt.graphs.config import tiny_config
from fastblt.graphs.hf_export import hf_config
from fastblt.graphs.model import BltModel
from fastblt.graphs.params import param_counts
from fastblt.graphs.presets import HF_PRESETS, hf_preset, init_checkpoint, preset_config

TABLE = "encoder_hash_tok_embedding.weight"
# total parameters, of which hash n-gram tables (6 × 500,002 rows × encoder width)
KNOWN = {"blt-1b": (4_633_127_680, 3_000_012 * 1024), "blt-7b": (10_653_082_624, 3_000_012 * 1280)}


def _serialized(cfg) -> dict:
    data = json.loads(cfg.to_json_string())
    data.pop("transformers_version")
    return data


def test_blt_1b_is_transformers_default_config():
    from transformers import BltConfig

    assert hf_preset("blt-1b") == _serialized(BltConfig())


@pytest.mark.parametrize("name", sorted(HF_PRESETS))
def test_presets_are_stable_under_transformers(name):
    """transformers reads each preset and writes it back unchanged (its derived fields agree with ours)."""
    from transformers import BltConfig

    assert _serialized(BltConfig(**hf_preset(name))) == hf_preset(name)


@pytest.mark.parametrize("name", sorted(HF_PRESETS))
def test_preset_parameter_counts(name):
    total, hashed = KNOWN[name]
    cfg = preset_config(name)
    with torch.device("meta"):  # shapes only: a 10 B-parameter model costs no memory
        model = BltModel(cfg)
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == total == sum(param_counts(cfg).values())
    assert params[TABLE].numel() == hashed == param_counts(cfg)["hash_embeddings"]
    if name == "blt-7b":  # 4 × 1280 pooled width ≠ 4096: the global input gets a projection
        assert params["global_transformer.token_embedding_projection.weight"].shape == (4096, 5120)


@pytest.mark.parametrize("name", sorted(HF_PRESETS))
def test_preset_shapes_equal_transformers_model(name):
    """Every HF tensor name and shape of the preset, from transformers' own model (built on meta)."""
    from transformers import BltConfig, BltForCausalLM

    with torch.device("meta"):
        hf = BltForCausalLM(BltConfig(**hf_preset(name)))
        ours = BltModel(preset_config(name))
    expected = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    got = {(k if k == "lm_head.weight" else "model." + k): tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == expected


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'blt-3b'; the public shapes are \['blt-1b', 'blt-7b'\]"):
        hf_preset("blt-3b")
    assert hf_preset("blt-1b") is not HF_PRESETS["blt-1b"]  # callers may edit their copy


def test_init_checkpoint_writes_shards_that_load(tmp_path):
    from safetensors import safe_open

    cfg = tiny_config()
    data = hf_config(cfg, 260, cfg.max_patch_length)
    path = init_checkpoint(tmp_path / "ckpt", data, shard_bytes=40_000, seed=3)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and sorted(p.name for p in path.glob("*.safetensors")) == shards
    assert "model." + TABLE in index["weight_map"] and "lm_head.weight" in index["weight_map"]  # HF key names
    with safe_open(str(path / index["weight_map"]["model." + TABLE]), "pt") as fh:
        assert list(fh.keys()) == ["model." + TABLE]  # 49 KB table > 40 KB shard: a shard of its own, not split
    config = json.loads((path / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config_from_hf(config) == cfg

    model = load_model(path)
    sd = {k: v.float() for k, v in model.state_dict().items()}
    assert torch.equal(sd["local_decoder.norm.weight"], torch.ones(32))
    table = sd[TABLE]
    assert abs(table.mean()) < 0.05 and 0.9 < table.std() < 1.1  # nn.Embedding's N(0, 1)
    bound = 32**-0.5
    lin = sd["local_decoder.layers.0.mlp.up_proj.weight"]
    assert lin.abs().max() <= bound and lin.abs().max() > 0.9 * bound  # nn.Linear's U(±1/√fan_in)
    again = init_checkpoint(tmp_path / "again", data, shard_bytes=40_000, seed=3)
    for s in shards:
        assert (path / s).read_bytes() == (again / s).read_bytes()  # seeded: the same bytes


def test_init_checkpoint_loads_in_transformers(tmp_path):
    """transformers reads what init_checkpoint writes: every key present, every value as fastblt loads it."""
    from transformers import BltForCausalLM

    cfg = tiny_config()
    path = init_checkpoint(tmp_path / "ckpt", hf_config(cfg, 260, None), dtype=torch.float32, shard_bytes=80_000)
    hf, info = BltForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = load_model(path).state_dict()
    for key, value in hf.state_dict().items():
        assert torch.equal(value, ours[key.removeprefix("model.")]), key


def test_init_checkpoint_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype=torch.int8 must be"):
        init_checkpoint(tmp_path / "x", "blt-1b", dtype=torch.int8)
    with pytest.raises(ValueError, match="shard_bytes=0 must be a positive"):
        init_checkpoint(tmp_path / "x", "blt-1b", shard_bytes=0)
    assert not (tmp_path / "x").exists()
