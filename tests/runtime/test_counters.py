"""Counters: the paper's N_enc / N_dec / bandwidth in closed form per mode, and graph calls per byte that
do not grow with the context."""

from __future__ import annotations

import pytest
import torch
from blt_helpers import peaky_bltd

from fastblt.runtime.backends.torch_ref import TorchBackend
from fastblt.runtime.generator import Generator
from fastblt.runtime.unmask import UnmaskConfig


def test_counters_closed_forms():
    model = peaky_bltd(4)
    with torch.no_grad():  # a decoder that ignores the latents: stale BLT-S drafts are always exact
        for layer in model.local_decoder.cross_attn_layers:
            layer.o_proj.weight.zero_()
    gen = Generator(TorchBackend(model))
    for block in (4, 8, 16):
        out = gen.generate("abc", mode="bltd", max_new_bytes=48, block_size=block, block_start="forced")
        if out.stop_reason != "eos":
            assert out.counters["n_enc"] == -(-48 // block)
            assert out.counters["n_dec"] == sum(out.counters["steps_per_block"])
            # after the first block, the next block's forced latent rides in the commit's global call
            assert out.counters["decode_graph_calls"].get("global", 0) <= out.counters["iterations"] + 1
        out = gen.generate("abc", mode="bltd", max_new_bytes=48, block_size=block)  # blocks at the open patch
        if out.stop_reason != "eos":  # one E+G per block; a block that re-reads known bytes yields fewer new ones
            assert out.counters["n_enc"] == out.counters["iterations"] >= -(-48 // block)
            assert out.counters["n_dec"] == sum(out.counters["steps_per_block"])
    for k in (1, 3, 7):
        out = gen.generate("abc", mode="blts", max_new_bytes=48, draft_k=k)
        assert out.counters["acceptance"] == 1.0
        n = out.counters["iterations"]
        assert n == -(-48 // (k + 1))
        assert out.counters["n_dec"] == n * (k + 1) and out.counters["n_enc"] == 2 * n
        p = out.counters["params"]
        bw = 2 * (out.counters["n_dec"] * p["decoder"] + out.counters["n_enc"] * (p["encoder"] + p["global"])) / 1e9
        assert out.counters["bandwidth_gb"] == pytest.approx(bw)
    one = gen.generate("abc", mode="bltdv", max_new_bytes=48, block_size=4, unmask=UnmaskConfig("one_step"))
    assert one.counters["n_dec"] == one.counters["n_enc"] == 2 * one.counters["iterations"]


def test_graph_calls_per_byte_do_not_grow_with_context():
    gen = Generator(TorchBackend(peaky_bltd(5)))
    per_byte = []
    for ctx in (100, 1500):
        prompt = ("x = [1, 2, 3]\n" * 200)[:ctx]
        out = gen.generate(prompt, mode="ar", max_new_bytes=64)
        calls = out.counters["decode_graph_calls"]  # prefill excluded (it is chunked at 512 bytes)
        per_byte.append(calls["decoder_step"] / out.counters["new_bytes"])
        assert calls["encoder"] == calls["patcher"] == calls["decoder_step"]
        assert calls["global"] <= calls["decoder_step"]
        decode_ms, all_ms = out.counters["decode_graph_ms"], out.counters["graph_ms"]
        assert decode_ms.keys() == all_ms.keys()
        assert all(0 < decode_ms[g] < all_ms[g] for g in ("patcher", "encoder", "decoder_step"))  # prefill left out
    assert per_byte[0] == per_byte[1] == 1.0
