"""The chain of incremental graphs computes the full forward's logits: byte by byte, in chunks, past the
local window, and after a rollback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from blt_helpers import PROMPTS, ids_of

from fastblt.graphs import load_model
from fastblt.runtime.backends.torch_ref import TorchBackend
from fastblt.runtime.session import Session

TOL = 1e-4


def _full(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


@pytest.mark.parametrize("name", ["k2-4bpp", "k3-maxlen", "k1-1bpp-gqa"])
def test_byte_by_byte_and_chunks(hf_checkpoints, name):
    model = load_model(hf_checkpoints[name])
    backend = TorchBackend(model)
    window = model.config.decoder.window
    for prompt in PROMPTS[:3]:
        ids = ids_of(prompt) * 2
        assert len(ids) > 2 * window  # well past the local window
        full = _full(model, ids)
        one = Session(backend)
        by_byte = np.concatenate([one.commit([i]) for i in ids])
        assert np.abs(by_byte - full).max() <= TOL
        chunked, s, i = [], Session(backend), 0
        for size in (1, 7, 3, 29, 2, 64, 1000):
            if i < len(ids):
                chunked.append(s.commit(ids[i:i + size]))
                i += size
        assert np.abs(np.concatenate(chunked) - full).max() <= TOL
        assert s.n_closed == one.n_closed


@pytest.mark.parametrize("name", ["k2-4bpp", "k3-maxlen"])
def test_rollback_then_new_bytes(hf_checkpoints, name):
    model = load_model(hf_checkpoints[name])
    s = Session(TorchBackend(model))
    ids = ids_of(PROMPTS[0]) * 2
    s.commit(ids)
    for back in (1, 5, 23, 40):
        r = len(s.ids) - back
        s.rollback(r)
        assert s.logits() is not None and s.length == r
        alt = [(x * 7) % 256 + 4 for x in ids[r: r + back + 3]]
        got = s.commit(alt)
        ref = _full(model, s.ids)
        assert np.abs(got - ref[r:]).max() <= TOL
        assert np.abs(s.logits(r - 1) - ref[r - 1]).max() <= TOL


def test_rollback_beyond_slack_is_refused(hf_checkpoints):
    s = Session(TorchBackend(load_model(hf_checkpoints["k2-4bpp"])), slack=8)
    s.commit(ids_of(PROMPTS[0]) * 3)
    with pytest.raises(ValueError, match="roll back"):
        s.rollback(10)


def test_decoder_block_causal_equals_decoder_step(hf_checkpoints):
    """decoder_block with a causal bias over a read-only prefix gives the rows decoder_step commits."""
    model = load_model(hf_checkpoints["k2-4bpp"])
    backend = TorchBackend(model)
    ids = ids_of(PROMPTS[0])
    s = Session(backend)
    s.commit(ids[:30])
    full = _full(model, ids[:38])
    block = ids[30:38]
    b = len(block)
    # states of the block come from the encoder in scratch mode (its K/V are discarded)
    from fastblt.runtime import host

    cfg = model.config
    enc_k, enc_v = s.caches["encoder"].visible()
    pos = np.arange(30, 38, dtype=np.int64)[None]
    states = backend.run("encoder", {
        "ids": np.array([block]), "positions": pos, "past_key": enc_k, "past_value": enc_v,
        "hash_embeds": backend.hash_table.embed(host.hash_ids(block, cfg.hash_sizes, cfg.hash_vocab,
                                                              cfg.hash_functions, history=ids[:30]))[None]})["states"]
    full_details = model.forward_details(torch.tensor([ids[:38]]))
    d = full_details["decoder_patch_ids"][0, 30:38].numpy()
    memory = full_details["memory"][0].detach().numpy()[d][None]
    past_k, past_v = s.caches["decoder"].visible()
    t = past_k.shape[3]
    qpos, kpos = pos[0][:, None], np.concatenate([np.arange(30 - t, 30), pos[0]])[None]
    ok = (kpos <= qpos) & (qpos - kpos < cfg.decoder.window)
    bias = np.where(ok, 0.0, np.finfo(np.float32).min).astype(np.float32)[None]
    out = backend.run("decoder_block", {"states": states, "positions": pos, "memory": memory,
                                        "attn_bias": bias, "past_key": past_k, "past_value": past_v})
    assert out["logits"].shape == (1, b, cfg.vocab_size)
    assert out["block_key"].shape[3] == b
    assert np.abs(out["logits"][0] - full[30:38]).max() <= TOL
