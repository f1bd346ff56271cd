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


# ---- streaming, sharded loads ----------------------------------------------------------------------------
TABLE = "encoder_hash_tok_embedding.weight"
IDS = torch.tensor([[1, 80, 81, 82, 83, 84, 85, 86, 87, 40, 41, 42, 80, 81, 82, 83]])


def _eager_load(path, dtype=None):
    """What load_model did before it streamed: read every file whole, build a real fp32 model, copy in."""
    from safetensors.torch import load_file

    from fastblt.graphs.checkpoint import _weights_files, read_config
    from fastblt.graphs.model import BltModel

    cfg, kind = read_config(path)
    tensors = {}
    for f in _weights_files(path):
        tensors.update(load_file(str(f)))
    if kind == "hf":
        tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    model = BltModel(cfg)
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return (model.to(dtype) if dtype is not None else model).eval()


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    assert ba.keys() == bb.keys() and ba  # RoPE tables are non-persistent: rebuilt, not loaded
    for k in ba:
        assert not ba[k].is_meta and ba[k].dtype == bb[k].dtype and torch.equal(ba[k], bb[k]), k


@pytest.fixture(scope="module")
def hf_sharded(hf_checkpoints, tmp_path_factory):
    """hf_checkpoints["k3-maxlen"] re-saved by transformers itself in several shards."""
    from transformers import BltForCausalLM

    path = tmp_path_factory.mktemp("sharded") / "hf"
    BltForCausalLM.from_pretrained(hf_checkpoints["k3-maxlen"]).save_pretrained(path, max_shard_size="100KB")
    return path


def test_transformers_sharded_checkpoint_loads_bit_for_bit(hf_checkpoints, hf_sharded):
    shards = sorted(p.name for p in hf_sharded.glob("model-*.safetensors"))
    assert len(shards) >= 3 and (hf_sharded / "model.safetensors.index.json").is_file()
    assert not (hf_sharded / "model.safetensors").exists()
    whole, sharded = load_model(hf_checkpoints["k3-maxlen"]), load_model(hf_sharded)
    _assert_same(whole, sharded)
    half = load_model(hf_sharded, torch.bfloat16)
    for name, tensor in half.state_dict().items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, whole.state_dict()[name].to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_streamed_load_equals_eager_load(tmp_path, tiny_model, hf_checkpoints, dtype):
    native = save_model(tiny_model, tmp_path / "native")
    for path in (native, hf_checkpoints["k2-4bpp"]):
        streamed, eager = load_model(path, dtype), _eager_load(path, dtype)
        _assert_same(streamed, eager)
        assert not streamed.training
        with torch.no_grad():
            assert torch.equal(streamed(IDS), eager(IDS))


def test_skip_leaves_a_tensor_on_meta(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "ckpt")
    model = load_model(path, torch.bfloat16, skip=[TABLE])
    table = model.get_parameter(TABLE)
    assert table.is_meta and table.dtype == torch.bfloat16 and table.shape == tiny_model.get_parameter(TABLE).shape
    full = tiny_model.state_dict()
    for name, tensor in model.state_dict().items():
        if name != TABLE:
            assert not tensor.is_meta and torch.equal(tensor, full[name].to(torch.bfloat16)), name
    assert not any(b.is_meta for b in model.buffers())
    with pytest.raises(ValueError, match="skip names .*'nope'.* are not tensors"):
        load_model(path, skip=["nope"])
    with pytest.raises(ValueError, match="is on the meta device"):
        save_model(model, tmp_path / "again")


def test_native_sharded_round_trip(tmp_path, tiny_model):
    from safetensors.torch import load_file

    path = save_model(tiny_model, tmp_path / "ckpt", max_shard_bytes=100_000)
    shards = sorted(p.name for p in path.glob("model-*.safetensors"))
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(shards) >= 3 and sorted(set(index["weight_map"].values())) == shards
    table_shard = index["weight_map"][TABLE]
    assert list(load_file(str(path / table_shard))) == [TABLE]  # larger than a shard: a shard of its own
    stored = {}
    for s in shards:  # safetensors' own reader accepts what fastblt writes
        stored.update(load_file(str(path / s)))
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in stored.values())
    _assert_same(load_model(path), tiny_model)
    half = save_model(tiny_model, tmp_path / "half", dtype=torch.bfloat16)
    assert load_file(str(half / "model.safetensors"))[TABLE].dtype == torch.bfloat16


@pytest.fixture
def sharded(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "ckpt", max_shard_bytes=100_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return path, index


def test_missing_shard(sharded):
    path, index = sharded
    shard = index["weight_map"]["lm_head.weight"]
    (path / shard).unlink()
    with pytest.raises(CheckpointError, match=rf"model.safetensors.index.json lists shard\(s\) that are missing: "
                                              rf"\['{shard}'\]"):
        load_model(path)


def test_truncated_shard(sharded):
    path, index = sharded
    shard = path / index["weight_map"][TABLE]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: not a readable safetensors file \(truncated: "
                                              r"[\d,]+ bytes on disk, its header describes [\d,]+\); re-download"):
        load_model(path)


def test_index_names_a_tensor_its_shard_lacks(sharded):
    path, index = sharded
    shards = sorted(set(index["weight_map"].values()))
    wrong = next(s for s in shards if s != index["weight_map"]["lm_head.weight"])
    index["weight_map"]["lm_head.weight"] = wrong
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"index.json names tensor 'lm_head.weight' in {wrong}, but "
                                              rf".*{wrong} does not hold it"):
        load_model(path)


def test_bad_index_and_unexpected_tensor(sharded):
    path, index = sharded
    (path / "model.safetensors.index.json").write_text('{"weights": {}}')
    with pytest.raises(CheckpointError, match="index.json: not a valid safetensors index"):
        load_model(path)
    index["weight_map"]["local_decoder.extra.weight"] = index["weight_map"]["lm_head.weight"]
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="names tensor 'local_decoder.extra.weight'"):
        load_model(path)
    del index["weight_map"]["local_decoder.extra.weight"]
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = json.loads((path / "config.json").read_text())
    cfg["decoder"]["n_layers"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"do not match the config: missing \[\], unexpected \['local_decoder"):
        load_model(path)


def test_checkpoint_tensor_streams_rows(tmp_path, tiny_model, hf_checkpoints, monkeypatch):
    from fastblt.graphs.checkpoint import checkpoint_index, checkpoint_tensor

    path = save_model(tiny_model, tmp_path / "ckpt", dtype=torch.bfloat16, max_shard_bytes=100_000)
    table = checkpoint_tensor(path, TABLE)
    full = tiny_model.get_parameter(TABLE).detach().to(torch.bfloat16)
    assert table.shape == tuple(full.shape) and table.dtype == torch.bfloat16
    assert torch.equal(torch.cat([table.rows(r, min(r + 100, table.shape[0])) for r in range(0, table.shape[0], 100)]),
                       full)
    with pytest.raises(ValueError, match=r"rows 5:2 are outside"):
        table.rows(5, 2)
    with pytest.raises(CheckpointError, match="holds no tensor 'nope'"):
        checkpoint_tensor(path, "nope")
    hf = checkpoint_tensor(hf_checkpoints["k2-4bpp"], "lm_head.weight")  # HF keys: model.* except lm_head
    assert hf.key == "lm_head.weight" and checkpoint_tensor(hf_checkpoints["k2-4bpp"], TABLE).key == "model." + TABLE
    assert torch.equal(hf.rows(0, 3), load_model(hf_checkpoints["k2-4bpp"]).lm_head.weight[:3])

    import safetensors

    def no_weights(*args, **kwargs):
        raise AssertionError("checkpoint_index must read headers only")

    monkeypatch.setattr(safetensors, "safe_open", no_weights)
    index = checkpoint_index(path)
    assert index[TABLE][1:] == ("BF16", tuple(full.shape)) and set(index) == set(tiny_model.state_dict())
