"""BLT-S: self-speculation. The decoder drafts k bytes past the patch boundary with stale conditioning (the
latest closed latent; no patcher or global call), then one commit of the draft verifies it with BLT's own
patching. Lossless: greedy output equals AR, sampled output is distributed as AR sampling."""

from __future__ import annotations

from collections.abc import Iterator

from fastblt.runtime.counters import Counters
from fastblt.runtime.host import EOS
from fastblt.runtime.modes.verify import verify
from fastblt.runtime.sampling import Sampler
from fastblt.runtime.session import Session

MAX_DRAFT = 64


def prepare(config, options: dict) -> dict:
    draft_k = options.get("draft_k", 4)
    if not isinstance(draft_k, int) or isinstance(draft_k, bool) or not 1 <= draft_k <= MAX_DRAFT:
        raise ValueError(f"draft_k={draft_k!r} must be an integer in [1, {MAX_DRAFT}]")
    return options


def slack(options: dict) -> int:
    """Drafts outstanding at once and the deepest rollback: k."""
    return options["draft_k"]


def run(session: Session, sampler: Sampler, budget: int, counters: Counters, draft_k: int = 4,
        **_options) -> Iterator[dict]:
    prepare(session.config, {"draft_k": draft_k})
    produced = 0
    nxt = sampler.sample(session.logits())  # exact: drawn from the model's own distribution
    while produced < budget:
        draft, q = [], []
        prev = nxt
        for _ in range(draft_k):
            if prev == EOS:
                break
            logits = session.draft_step(prev)
            counters.n_dec["draft_step"] += 1
            if sampler.cfg.greedy:  # greedy verification reads only the drafted bytes, never q
                prev = sampler.sample(logits)
                q.append(None)
            else:
                q.append(sampler.probs(logits))
                prev = sampler.draw(q[-1])
            draft.append(prev)
        yield {"type": "draft", "ids": [nxt] + draft}
        committed, nxt = verify(session, sampler, nxt, draft, q, counters)
        counters.iterations += 1
        counters.paper_n_enc += 2
        counters.paper_n_dec += draft_k + 1
        produced += len(committed)
        yield {"type": "verify", "accepted": len(committed) - 1, "drafted": len(draft)}
        yield {"type": "commit", "ids": committed}
        if committed[-1] == EOS:
            return
