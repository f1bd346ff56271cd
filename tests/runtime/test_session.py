"""Session: caches after rejected drafts equal a fresh prefill, drafts' exact work reused by the commit,
the slack bounding drafts and rollback with clear errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from blt_helpers import peaky_bltd

from fastblt.runtime.backends.torch_ref import TorchBackend
from fastblt.runtime.counters import Counters
from fastblt.runtime.modes import selfspec
from fastblt.runtime.sampling import Sampler, SamplingConfig
from fastblt.runtime.session import Session


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
    backend = TorchBackend(peaky_bltd(2, threshold=1.0))  # ~1-2 bytes per patch: stale drafts get rejected
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
def test_commit_after_drafts_reuses_their_exact_work(shared):
    """The encoder work of every shared draft is kept; the decoder rows of the shared drafts before the first
    patch the commit closes (they read the right latent) are kept too, and only the rest run again."""
    backend = TorchBackend(peaky_bltd(3))
    rows_run = []
    run = backend.run

    def counting_run(graph, feeds):
        if graph == "decoder_step":
            rows_run.append(feeds["states"].shape[1])
        return run(graph, feeds)

    backend.run = counting_run
    session = Session(backend)
    session.commit([1] + [c + 4 for c in b"def f(x):\n    return"])
    n0 = session.length
    drafts = [c + 4 for c in b" x + 1"]
    for byte_id in drafts[:5]:
        session.draft_step(byte_id)
    ids = drafts[:shared] + [c + 4 for c in b"(y)-22"][: 6 - shared]
    steps, calls = session.byte_steps["encoder"], session.calls["encoder"]
    rows_run.clear()
    logits = session.commit(ids)
    assert session.byte_steps["encoder"] - steps == 6 - shared  # only the bytes the drafts did not encode
    assert session.calls["encoder"] - calls == 1
    assert session.draft_ids == [] and session.draft_states == [] and session.draft_logits == []
    first_closed = min(p for p in session.patch_starts if p > n0) - 1  # the first row reading a new latent
    exact = min(shared, first_closed - n0)
    assert sum(rows_run) == 6 - exact
    if shared == 5:
        assert exact > 0  # the case this test is about does occur
    _same_as_prefill(session, backend)
    fresh = Session(backend)
    fresh.commit(session.ids)
    want = np.stack([fresh.logits(p) for p in range(n0, n0 + 6)])
    assert np.abs(logits - want).max() <= 1e-4
    assert np.abs(np.stack([session.logits(p) for p in range(n0, n0 + 6)]) - want).max() <= 1e-4


def test_a_rejected_commit_keeps_the_drafts():
    backend = TorchBackend(peaky_bltd(3))
    session = Session(backend)
    session.commit([1, 70, 71])
    session.draft_step(72)
    with pytest.raises(ValueError, match="ids must lie in"):
        session.commit([72, 999])
    assert session.draft_ids == [72] and session.caches["encoder"].end == 4
    session.commit([72, 73])
    _same_as_prefill(session, backend)


def test_session_slack_bounds_drafts_and_rollback_with_clear_errors():
    backend = TorchBackend(peaky_bltd(3))  # window 64
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


@pytest.mark.parametrize("start", ["patch", "forced"])
@pytest.mark.parametrize("rows", [None, frozenset({4, 8, 16}), frozenset({8})])
def test_deferred_decoder_rows_run_in_the_next_blocks_call_exactly(start, rows):
    """BLT-D's commit leaves its decoder rows to the next block's first decoder_block call (padded to a size
    the backend runs, or run on their own when none is large enough): the block's logits, the row logits and
    every cache equal the unfused path, with a window short enough that its edge falls inside the block."""
    model = peaky_bltd(4, window=20)
    fused, plain = TorchBackend(model), TorchBackend(model)
    fused.fused_block_rows = rows
    a, b = Session(fused, slack=4), Session(plain, slack=4)
    prompt = [1] + [c + 4 for c in b"def f(x):\n    return x"]
    a.commit(prompt)
    b.commit(prompt)
    rng = np.random.default_rng(0)
    for _ in range(6):
        new = [int(c) + 4 for c in rng.integers(32, 127, size=int(rng.integers(1, 7)))]
        assert a.commit(new, open_latent=start == "forced", defer_decoder=True) is None
        b.commit(new, open_latent=start == "forced")
        (sa, la), (sb, lb) = a.block_anchor(8, start), b.block_anchor(8, start)
        assert sa == sb and np.abs(la - lb).max() <= 1e-5
        block = np.full(8, 260, dtype=np.int64)
        block[: a.length - sa] = a.ids[sa:]
        got = a.block_logits(a.block_states(block, sa), np.repeat(la[None], 8, axis=0), start=sa)
        want = b.block_logits(b.block_states(block, sb), np.repeat(lb[None], 8, axis=0), start=sb)
        assert np.abs(got - want).max() <= 1e-4
        assert np.abs(a.caches["decoder"].visible()[0] - b.caches["decoder"].visible()[0]).max() <= 1e-4
    assert a.calls.get("decoder_step", 0) == (1 if rows != frozenset({8}) else 7)  # the prompt's, or each commit's
    _same_as_prefill(a, plain)
