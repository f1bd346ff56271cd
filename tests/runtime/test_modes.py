"""The decoding modes: greedy identity of the verification modes, each mode's KV slack, sampling
distributions (χ²), bad inputs, streaming (session caches: test_session.py; counters: test_counters.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from blt_helpers import peaky_bltd

from fastblt.runtime import SequenceTooLongError
from fastblt.runtime.backends.torch_ref import TorchBackend
from fastblt.runtime.generator import Generator
from fastblt.runtime.unmask import UnmaskConfig

PROMPTS = ["def f(x):", "", "Grüße, 東京!", b"\x00\xff\xc3(", "import os\nimport sys\n\n\nclass A:\n    pass\n"]
RULES = [UnmaskConfig("one_step"), UnmaskConfig("confidence", alpha=0.3), UnmaskConfig("entropy", gamma=1.5),
         UnmaskConfig("entropy", gamma=1.5, eb_variant="eb_sampler"),
         UnmaskConfig("confidence", alpha=0.5, order="left_to_right")]


@pytest.fixture(scope="module", params=[0, 1])
def gen(request):
    return Generator(TorchBackend(peaky_bltd(request.param, threshold=3.0 + request.param)))


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


def test_generator_sessions_keep_only_what_their_mode_needs():
    from fastblt.runtime.modes import REGISTRY

    cfg = peaky_bltd(0).config

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
    gen = Generator(TorchBackend(peaky_bltd(3, threshold=1.0)))
    ar = _first_bytes(gen, "ar", 900)
    other = _first_bytes(gen, mode, 900, **kw)
    assert _chi2_p(ar, other) > 1e-3
    # power check: the drafts alone (never verified) would be distributed differently
    if mode == "bltdv":
        drafts = _first_bytes(gen, "bltd", 900, block_size=4, unmask=UnmaskConfig("one_step"))
        assert _chi2_p(ar, drafts) < 1e-3


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
