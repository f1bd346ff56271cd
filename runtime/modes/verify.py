"""Verify a draft (shared by BLT-S and BLT-DV): commit it causally with BLT's own patching and
cross-attention, test each drafted byte against the model's distribution, keep the accepted prefix.

Greedy: accept iff the byte is the argmax, else take the argmax: the output equals AR decoding.
Sampling: speculative sampling (accept with min(1, p/q), else draw from norm(max(0, p − q))), which leaves
the output distributed exactly as AR sampling when q is the distribution each byte was drawn from.
"""

from __future__ import annotations

import numpy as np

from fastblt.runtime.host import EOS


def verify(session, sampler, first: int, draft: list[int], q: list[np.ndarray], counters) -> tuple[list[int], int]:
    """`first` is an exact byte (already sampled from the model) followed by `draft` with per-byte draft
    distributions `q`. Commits [first] + accepted bytes; returns (committed ids, next exact byte)."""
    if first == EOS:
        return [EOS], EOS
    l = session.length
    if EOS in draft:  # nothing after EOS matters
        cut = draft.index(EOS) + 1
        draft, q = draft[:cut], q[:cut]
    ids = [first] + draft
    ends = ids[-1] == EOS
    logits = session.commit(ids[:-1] if ends else ids)  # EOS needs no row of its own
    counters.n_dec["verify"] += 1
    counters.bytes_drafted += len(ids) - 1
    rejected = fix = None
    if sampler.cfg.greedy:  # accept iff each byte is the argmax; the first mismatch is replaced by it
        best = sampler.argmax(logits[: len(ids) - 1]).tolist()
        rejected = next((i for i in range(1, len(ids)) if ids[i] != best[i - 1]), None)
        fix = None if rejected is None else best[rejected - 1]
    else:
        for i in range(1, len(ids)):
            p = sampler.probs(logits[i - 1])
            if not sampler.accept(ids[i], p, q[i - 1]):
                rejected, fix = i, sampler.residual(p, q[i - 1])
                break
    if rejected is not None:
        session.rollback(l + rejected)
        counters.bytes_accepted += rejected - 1
        counters.accepted_per_iteration.append(rejected - 1)
        return ids[:rejected], fix
    counters.bytes_accepted += len(ids) - 1
    counters.accepted_per_iteration.append(len(ids) - 1)
    if ends:
        return ids, EOS
    return ids, sampler.sample(logits[len(ids) - 1])
