"""The decoding modes: greedy identity of the verification modes, exact caches after rejections,
sampling distributions (χ²), counters, and bad inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fastblt.graphs.config import tiny_config
from fastblt.graphs.model import BltModel
from fastblt.runtime import SequenceTooLongError
from fastblt.runtime.backends.torch_ref import TorchBackend
from fastblt.runtime.counters import Counters
from fastblt.runtime.generator import Generator
from fastblt.runtime.modes import selfspec
from fastblt.runtime.sampling import Sampler, SamplingConfig
from fastblt.runtime.session import Session
from fastblt.runtime.unmask import UnmaskConfig

PROMPTS = ["def f(x):", "", "Grüße, 東京!", b"\x00\xff\xc3(", "import os\nimport sys\n\n\nclass A:\n    pass\n"]
RULES = [UnmaskConfig("one_step"), UnmaskConfig("confidence", alpha=0.3), UnmaskConfig("entropy", gamma=1.5),
         UnmaskConfig("entropy", gamma=1.5, eb_variant="eb_sampler"),
         UnmaskConfig("confidence", alpha=0.5, order="left_to_right")]


def _model(seed: int, threshold: float = 3.5, **kw) -> BltModel:
    torch.manual_seed(seed)
    cfg = tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8, 16), patch_threshold=threshold,
                      **kw)
    model = BltModel(cfg).eval()
    with torch.no_grad():
        model.patcher.lm_head.weight.mul_(10.0)
        model.lm_head.weight.mul_(3.0)  # peakier next-byte distributions: fewer near-ties in greedy tests
    return model


@pytest.fixture(scope="module", params=[0, 1])
def gen(request):
    return Generator(TorchBackend(_model(request.param, threshold=3.0 + request.param)))


def test_blts_greedy_equals_ar(gen):
    for prompt in PROMPTS:
        ar = gen.generate(prompt, mode="ar", max_new_bytes=48)
        for k in (2, 4, 8, 16):
            out = gen.generate(prompt, mode="blts", max_new_bytes=48, draft_k=k)
            assert out.bytes == ar.bytes, (prompt, k)


def test_bltdv_greedy_equals_ar(gen):
    for prompt in PROMPTS[:3]:
        ar = gen.generate(prompt, mode="ar", max_new_bytes=40)
        for block, rule in itertools.product((4, 8, 16), RULES):
            out = gen.generate(prompt, mode="bltdv", max_new_bytes=40, block_size=block, unmask=rule)
            assert out.bytes == ar.bytes, (prompt, block, rule)


def _same_as_prefill(session: Session, backend) -> None:
    fresh = Session(backend)
    fresh.commit(session.ids)
    assert fresh.patch_starts == session.patch_starts
    assert np.allclose(fresh.entropies, session.entropies, atol=1e-5)
    n = fresh.n_closed
    assert np.abs(fresh.memory[:n] - session.memory[:n]).max() <= 1e-4
    for name in ("patcher", "encoder", "global", "decoder"):
        a, b = fresh.caches[name], session.caches[name]
        assert a.end == b.end, name
        ka, va = a.visible()
        kb, vb = b.visible()
        assert ka.shape == kb.shape and np.abs(ka - kb).max() <= 1e-4 and np.abs(va - vb).max() <= 1e-4, name
    assert np.abs(fresh.logits() - session.logits()).max() <= 1e-4


def test_caches_after_rejection_equal_fresh_prefill():
    backend = TorchBackend(_model(2, threshold=1.0))  # ~1-2 bytes per patch: stale drafts get rejected
    session = Session(backend)
    session.commit([1] + [c + 4 for c in b"for i in range(10):"])
    sampler = Sampler(SamplingConfig(temperature=1.0, seed=0), backend.config.vocab_size)
    counters = Counters("blts")
    rejections = 0
    for event in itertools.islice(selfspec.run(session, sampler, 200, counters, draft_k=6), 200):
        if event["type"] == "verify":
            rejections += event["accepted"] < event["drafted"]
            _same_as_prefill(session, backend)
    assert rejections >= 3


@pytest.mark.parametrize("shared", [5, 2, 0])
def test_commit_after_drafts_reuses_their_encoder_work_exactly(shared):
    backend = TorchBackend(_model(3))
    session = Session(backend)
    session.commit([1] + [c + 4 for c in b"def f(x):\n    return"])
    drafts = [c + 4 for c in b" x + 1"]
    for byte_id in drafts[:5]:
        session.draft_step(byte_id)
    ids = drafts[:shared] + [c + 4 for c in b"(y)-22"][: 6 - shared]
    steps, calls = session.byte_steps["encoder"], session.calls["encoder"]
    session.commit(ids)
    assert session.byte_steps["encoder"] - steps == 6 - shared  # only the bytes the drafts did not encode
    assert session.calls["encoder"] - calls == 1
    assert session.draft_ids == [] and session.draft_states == []
    _same_as_prefill(session, backend)


def test_a_rejected_commit_keeps_the_drafts():
    backend = TorchBackend(_model(3))
    session = Session(backend)
    session.commit([1, 70, 71])
    session.draft_step(72)
    with pytest.raises(ValueError, match="ids must lie in"):
        session.commit([72, 999])
    assert session.draft_ids == [72] and session.caches["encoder"].end == 4
    session.commit([72, 73])
    _same_as_prefill(session, backend)


def test_session_slack_bounds_drafts_and_rollback_with_clear_errors():
    backend = TorchBackend(_model(3))  # window 64
    text = [1] + [c + 4 for c in b"import os\nimport sys\n" * 12]
    session = Session(backend, slack=3)
    for i in range(0, len(text), 5):  # many small commits: every windowed cache compacts
        session.commit(text[i:i + 5])
    assert all(session.caches[n].start > 0 for n in ("patcher", "encoder", "decoder"))
    for byte_id in (50, 51, 52):
        session.draft_step(byte_id)
    with pytest.raises(ValueError, match="allows 3 outstanding drafts"):
        session.draft_step(53)
    session.commit([50, 51, 52, 53])
    session.rollback(session.length - 3)  # within the slack: exact
    _same_as_prefill(session, backend)
    for i in range(12):  # 12 more one-byte commits compact again: a deep rollback would lose window entries
        session.commit([60 + i])
    with pytest.raises(ValueError, match="cannot roll back 40 bytes: this session keeps 3"):
        session.rollback(session.length - 40)
    _same_as_prefill(session, backend)  # the failed rollback changed nothing


def test_generator_sessions_keep_only_what_their_mode_needs():
    from fastblt.runtime.modes import REGISTRY

    cfg = _model(0).config

    def slack(mode, **options):
        module = REGISTRY[mode].load()
        return module.slack(module.prepare(cfg, dict(dict(draft_k=4, block_size=8, unmask=None,
                                                          block_start=None), **options)))

    assert slack("ar") == 0
    assert slack("bltd") == 4 and slack("bltd", block_size=16) == 8  # a block re-reads up to B/2 committed rows
    assert slack("bltd", block_start="forced") == 0
    assert slack("blts", draft_k=16) == 16
    assert slack("bltdv", block_size=16) == 16


def _first_bytes(gen, mode, n, **kw):
    counts: dict[bytes, int] = {}
    for seed in range(n):
        out = gen.generate("x = ", mode=mode, max_new_bytes=3, temperature=1.0, top_k=3, seed=seed, **kw)
        counts[out.bytes] = counts.get(out.bytes, 0) + 1
    return counts


def _chi2_p(a: dict, b: dict) -> float:
    from scipy.stats import chi2_contingency

    keys = sorted(set(a) | set(b))
    table = np.array([[a.get(k, 0) for k in keys], [b.get(k, 0) for k in keys]])
    table = table[:, table.sum(0) >= 10]  # pool-free: drop cells too rare for the χ² approximation
    return chi2_contingency(table)[1]


@pytest.mark.parametrize(("mode", "kw"), [("blts", dict(draft_k=2)),
                                          ("bltdv", dict(block_size=4, unmask=UnmaskConfig("one_step")))])
def test_sampling_distribution_matches_ar(mode, kw):
    pytest.importorskip("scipy")
    gen = Generator(TorchBackend(_model(3, threshold=1.0)))
    ar = _first_bytes(gen, "ar", 900)
    other = _first_bytes(gen, mode, 900, **kw)
    assert _chi2_p(ar, other) > 1e-3
    # power check: the drafts alone (never verified) would be distributed differently
    if mode == "bltdv":
        drafts = _first_bytes(gen, "bltd", 900, block_size=4, unmask=UnmaskConfig("one_step"))
        assert _chi2_p(ar, drafts) < 1e-3


def test_counters_closed_forms():
    model = _model(4)
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
    gen = Generator(TorchBackend(_model(5)))
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


def test_bad_inputs(gen, tiny_model):
    assert gen.generate("", max_new_bytes=4).prompt_bytes == 0
    assert gen.generate(b"\x00\xff\xfe", max_new_bytes=4).prompt_bytes == 3
    with pytest.raises(SequenceTooLongError, match="exceeds the model's 4096 byte positions"):
        gen.generate("a" * 5000, max_new_bytes=4)
    for bad in (0, -3, 10**9, 2.5, True):
        with pytest.raises(ValueError, match="max_new_bytes=.* must be an integer in \\[1, 1048576\\]"):
            gen.generate("a", max_new_bytes=bad)
    with pytest.raises(ValueError, match=r"unknown mode 'beam'; valid modes are \['ar', 'bltd', 'blts', 'bltdv'\]"):
        gen.generate("a", mode="beam")
    with pytest.raises(ValueError, match=r"alpha=1.5 must be in \(0, 1\]"):
        gen.generate("a", mode="bltd", unmask=UnmaskConfig("confidence", alpha=1.5))
    with pytest.raises(ValueError, match=r"gamma=0 must be > 0"):
        gen.generate("a", mode="bltd", unmask=UnmaskConfig("entropy", gamma=0))
    with pytest.raises(ValueError, match=r"unmasking rule 'random'; valid rules are"):
        gen.generate("a", mode="bltd", unmask=UnmaskConfig("random"))
    with pytest.raises(ValueError, match=r"draft_k=0 must be an integer in \[1, 64\]"):
        gen.generate("a", mode="blts", draft_k=0)
    with pytest.raises(ValueError, match=r"block size 32 was not trained; this model supports \[4, 8, 16\]"):
        gen.generate("a", mode="bltd", block_size=32)
    plain = Generator(TorchBackend(tiny_model))  # not diffusion-trained
    for mode in ("bltd", "bltdv"):
        with pytest.raises(ValueError, match="was not diffusion-trained.*use mode ar or blts"):
            plain.generate("a", mode=mode)
    assert plain.generate("a", mode="ar", max_new_bytes=8).bytes == plain.generate(
        "a", mode="blts", max_new_bytes=8).bytes


def test_stream_never_splits_utf8_and_stops(gen):
    out = gen.generate("é", max_new_bytes=64, temperature=1.0, seed=1)
    text = "".join(e["text"] for e in gen.stream("é", max_new_bytes=64, temperature=1.0, seed=1)
                   if e["type"] == "text")
    assert text == out.bytes.decode("utf-8", errors="replace")
    seed = next(s for s in range(50) if len(gen.generate("", max_new_bytes=30, temperature=1.0, seed=s).bytes) >= 8)
    first = gen.generate("", max_new_bytes=30, temperature=1.0, seed=seed)
    stop = first.bytes[5:7]
    cut = gen.generate("", max_new_bytes=30, stop=[stop], temperature=1.0, seed=seed)
    assert cut.stop_reason == "stop" and cut.bytes == first.bytes[: first.bytes.find(stop)]
