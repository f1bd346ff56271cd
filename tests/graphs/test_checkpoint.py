"""Native save/load, HF detection, and one clear error per bad checkpoint. Nothing is ever unpickled."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from fastblt.graphs import CheckpointError, ConfigError, load_model, save_model
from fastblt.graphs.checkpoint import config_from_hf


def test_native_round_trip(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    again = load_model(path)
    ids = torch.tensor([[1, 80, 81, 82, 83, 84, 85, 86, 87]])
    with torch.no_grad():
        assert torch.equal(tiny_model(ids), again(ids))
    assert not again.training


def test_save_is_atomic_over_existing(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "ckpt")
    save_model(tiny_model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_hf_directory_is_detected(hf_checkpoints):
    model = load_model(hf_checkpoints["k2-4bpp"])
    assert model.config.cross_attn_k == 2 and model.config.vocab_size == 260


def test_missing_files(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "ckpt")
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing model.safetensors"):
        load_model(path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing config.json"):
        load_model(path)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_model(tmp_path / "nope")


def test_pickle_is_refused(tmp_path, tiny_model):
    blob = tmp_path / "model.pt"
    blob.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    with pytest.raises(CheckpointError, match="pickle.*never unpickles"):
        load_model(blob)
    path = save_model(tiny_model, tmp_path / "ckpt")
    (path / "model.safetensors").unlink()
    shutil.copy(blob, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: this is a pickle"):
        load_model(path)
    shutil.copy(blob, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors: this is a pickle"):
        load_model(path)


def test_corrupt_and_mismatched_weights(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "ckpt")
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(path)
    path = save_model(tiny_model, tmp_path / "ckpt2")
    cfg = json.loads((path / "config.json").read_text())
    cfg["decoder"]["n_layers"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"weights do not match the config: missing \['local_decoder.cross"):
        load_model(path)
    cfg["decoder"]["n_layers"] = 2
    cfg["decoder"]["ffn_dim"] = 96
    (path / "config.json").write_text(json.dumps(cfg))
    msg = r"local_decoder.layers.0.mlp.* has shape \(\d+, \d+\), the config implies"
    with pytest.raises(CheckpointError, match=msg):
        load_model(path)


def test_bad_configs(tmp_path, tiny_model, hf_checkpoints):
    path = save_model(tiny_model, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["hash_size"] = [3]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config.json: unknown field\(s\) \['hash_size'\]"):
        load_model(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_model(path)
    hf = tmp_path / "hf"
    shutil.copytree(hf_checkpoints["k2-4bpp"], hf)
    data = json.loads((hf / "config.json").read_text())
    data["encoder_config"]["cross_attn_all_layers"] = True
    (hf / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="HF BLT config.*cross_attn_all_layers=true is not supported"):
        load_model(hf)
    data["model_type"] = "llama"
    (hf / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="model_type='llama' is not a BLT"):
        load_model(hf)


def test_terse_hf_config_takes_hf_defaults():
    """A field HF's BltConfig fills in by default must mean the same thing in fastblt (patcher window 512,
    patcher/global max positions 8192/4096), not 'unbounded'."""
    from transformers import BltConfig

    sub = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64)
    terse = dict(patcher_config=dict(sub), encoder_config=dict(sub), decoder_config=dict(sub),
                 global_config=dict(sub, hidden_size=64))
    cfg = config_from_hf(terse)
    hf = BltConfig(**terse)
    assert cfg.patcher.window == hf.patcher_config.sliding_window == 512
    assert cfg.patcher.max_positions == hf.patcher_config.max_position_embeddings
    assert cfg.global_transformer.max_positions == hf.global_config.max_position_embeddings
