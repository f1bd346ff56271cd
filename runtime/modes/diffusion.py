"""BLT-D: the decoder fills a block of B masked bytes in s ≤ B diffusion steps; one latent per block.

Each step runs the encoder in scratch mode over the block (MASK is an ordinary id) and `decoder_block`
(prefix read-only, block bidirectional, every block row reading the last latent, the open patch forced
closed). The filled block is then committed (truncated at EOS)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fastblt.runtime.counters import Counters
from fastblt.runtime.sampling import Sampler
from fastblt.runtime.session import Session
from fastblt.runtime.unmask import UnmaskConfig, select


def check_model(cfg, block_size: int) -> None:
    if not cfg.diffusion_trained:
        raise ValueError("this model's decoder was not diffusion-trained (its config has no block_sizes), so it "
                         "cannot run BLT-D or BLT-DV; use mode ar or blts, or adapt it with "
                         "`blt-export train-decoder`")
    if block_size not in cfg.block_sizes:
        raise ValueError(f"block size {block_size} was not trained; this model supports {list(cfg.block_sizes)}")


def fill_block(session: Session, sampler: Sampler, rule: UnmaskConfig, block: np.ndarray, memory: np.ndarray,
               counters: Counters, events: list) -> tuple[np.ndarray, np.ndarray]:
    """Unmask every MASK in `block` (in place). Returns (block, q) with q[i] the distribution position i was
    drawn from (its row for verification)."""
    mask_id = session.config.mask_id
    q = np.zeros((block.size, session.config.vocab_size))
    steps = 0
    while True:
        masked = np.flatnonzero(block == mask_id)
        if masked.size == 0:
            break
        logits = session.block_logits(session.scratch_states(block), memory, bidirectional=True)
        dists = sampler.soft(logits)
        chosen = select(rule, masked, dists)
        for i in chosen:
            q[i] = sampler.probs(logits[i])
            block[i] = sampler.draw(q[i])
        steps += 1
        events.append({"type": "unmask", "step": steps, "positions": chosen.tolist(),
                       "ids": block[chosen].tolist()})
    counters.n_dec["diffusion_step"] += steps
    counters.steps_per_block.append(steps)
    return block, q


def run(session: Session, sampler: Sampler, budget: int, counters: Counters, block_size: int = 8,
        unmask: UnmaskConfig | None = None, **_options) -> Iterator[dict]:
    check_model(session.config, block_size)
    rule = (unmask or UnmaskConfig()).validate()
    cfg = session.config
    produced = 0
    while produced < budget:
        memory = np.repeat(session.last_latent()[None], block_size, axis=0)
        events: list = []
        block, _ = fill_block(session, sampler, rule, np.full(block_size, cfg.mask_id, dtype=np.int64), memory,
                              counters, events)
        yield from events
        counters.iterations += 1
        counters.paper_n_enc += 1
        counters.paper_n_dec += counters.steps_per_block[-1]
        ids = block.tolist()
        if 2 in ids:  # EOS ends the generation inside the block
            ids = ids[: ids.index(2) + 1]
            yield {"type": "commit", "ids": ids}
            return
        session.commit(ids)
        counters.n_dec["commit"] += 1
        produced += len(ids)
        yield {"type": "commit", "ids": ids}
