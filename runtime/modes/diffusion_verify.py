"""BLT-DV: BLT-D drafts, one causal commit verifies. Each block is [the exact next byte, B−1 MASKs]: the
first byte was drawn from the model's own distribution (so every iteration advances), the rest are filled
by diffusion steps and verified like BLT-S drafts. Greedy output equals the same model's AR output.

Under sampling the verification is exact for one-step drafts and for left-to-right unmasking; multi-step
drafts unmasked in any order are only approximately lossless (flagged in the counters as exact=false).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fastblt.runtime.counters import Counters
from fastblt.runtime.host import EOS
from fastblt.runtime.modes.diffusion import check_model, fill_block
from fastblt.runtime.modes.verify import verify
from fastblt.runtime.sampling import Sampler
from fastblt.runtime.session import Session
from fastblt.runtime.unmask import UnmaskConfig


def run(session: Session, sampler: Sampler, budget: int, counters: Counters, block_size: int = 8,
        unmask: UnmaskConfig | None = None, **_options) -> Iterator[dict]:
    check_model(session.config, block_size)
    rule = (unmask or UnmaskConfig(rule="one_step")).validate()
    if not sampler.cfg.greedy and rule.rule != "one_step" and rule.order != "left_to_right":
        counters.exact = False
    mask_id = session.config.mask_id
    produced = 0
    nxt = sampler.sample(session.logits())
    while produced < budget:
        if nxt == EOS:
            yield {"type": "commit", "ids": [EOS]}
            return
        memory = np.repeat(session.last_latent()[None], block_size, axis=0)
        block = np.full(block_size, mask_id, dtype=np.int64)
        block[0] = nxt
        events: list = []
        block, q = fill_block(session, sampler, rule, block, memory, counters, events)
        yield from events
        draft = block[1:].tolist()
        yield {"type": "draft", "ids": block.tolist()}
        committed, nxt = verify(session, sampler, int(block[0]), draft, list(q[1:]), counters)
        counters.iterations += 1
        counters.paper_n_enc += 2
        counters.paper_n_dec += counters.steps_per_block[-1] + 1
        produced += len(committed)
        yield {"type": "verify", "accepted": len(committed) - 1, "drafted": len(draft)}
        yield {"type": "commit", "ids": committed}
        if committed[-1] == EOS:
            return
