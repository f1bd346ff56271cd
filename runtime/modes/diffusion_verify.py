"""BLT-DV: BLT-D drafts, one causal commit verifies. Each block is [the open patch's known bytes, the exact
next byte, MASKs] (or, with block_start="forced", [the exact next byte, B−1 MASKs]): the exact byte was drawn
from the model's own distribution (so every iteration advances), the MASKs are filled by diffusion steps and
verified like BLT-S drafts. Greedy output equals the same model's AR output.

Under sampling the verification is exact for one-step drafts and for left-to-right unmasking; multi-step
drafts unmasked in any order are only approximately lossless (flagged in the counters as exact=false).
"""

from __future__ import annotations

from collections.abc import Iterator

from fastblt.runtime.counters import Counters
from fastblt.runtime.host import EOS
from fastblt.runtime.modes import diffusion
from fastblt.runtime.modes.diffusion import check_model, fill_block, open_block
from fastblt.runtime.modes.verify import verify
from fastblt.runtime.sampling import Sampler
from fastblt.runtime.session import Session
from fastblt.runtime.unmask import UnmaskConfig

BLOCK_START = "patch"  # no forced-closure global call per iteration, and drafts in the trained layout


def prepare(config, options: dict) -> dict:
    return diffusion.prepare(config, options, default_start=BLOCK_START)


def slack(options: dict) -> int:
    """A rejected draft rolls back at most the block: B."""
    return options["block_size"]


def run(session: Session, sampler: Sampler, budget: int, counters: Counters, block_size: int = 8,
        unmask: UnmaskConfig | None = None, block_start: str = BLOCK_START, **_options) -> Iterator[dict]:
    check_model(session.config, block_size)
    rule = (unmask or UnmaskConfig(rule="one_step")).validate()
    if not sampler.cfg.greedy and rule.rule != "one_step" and rule.order != "left_to_right":
        counters.exact = False
    produced = 0
    nxt = sampler.sample(session.logits())
    while produced < budget:
        if nxt == EOS:
            yield {"type": "commit", "ids": [EOS]}
            return
        start, block, memory = open_block(session, block_size, block_start, first=nxt)
        head = session.length - start  # the block's row of the exact byte `nxt`
        events: list = []
        block, q = fill_block(session, sampler, rule, block, memory, counters, events, start)
        yield from events
        draft = block[head + 1:].tolist()
        yield {"type": "draft", "ids": block[head:].tolist()}
        q = [None] * len(draft) if q is None else list(q[head + 1:])
        committed, nxt = verify(session, sampler, int(block[head]), draft, q, counters)
        counters.iterations += 1
        counters.paper_n_enc += 2
        counters.paper_n_dec += counters.steps_per_block[-1] + 1
        produced += len(committed)
        yield {"type": "verify", "accepted": len(committed) - 1, "drafted": len(draft)}
        yield {"type": "commit", "ids": committed}
        if committed[-1] == EOS:
            return
