"""BLT-D: the decoder fills a block of B bytes in s ≤ B diffusion steps; one latent per block.

The block starts where the open patch starts (`block_start="patch"`, the default): its first rows are the
open patch's known bytes and the rest are MASK, every row reads the latent of the patch before it, exactly
the layout the decoder was trained on, and no global call is needed to start it. `block_start="forced"` is
the paper's layout: B masked rows after the sequence, reading the open patch's latent closed by force.
Each step runs the encoder in scratch mode over the masked rows (MASK is an ordinary id) and
`decoder_block` (prefix read-only, block bidirectional). The new bytes are then committed (truncated at EOS)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fastblt.runtime.counters import Counters
from fastblt.runtime.host import EOS
from fastblt.runtime.sampling import Sampler
from fastblt.runtime.session import BLOCK_STARTS, Session
from fastblt.runtime.unmask import UnmaskConfig, select


def check_model(cfg, block_size: int) -> None:
    if not cfg.diffusion_trained:
        raise ValueError("this model's decoder was not diffusion-trained (its config has no block_sizes), so it "
                         "cannot run BLT-D or BLT-DV; use mode ar or blts, or adapt it with "
                         "`blt-export train-decoder`")
    if block_size not in cfg.block_sizes:
        raise ValueError(f"block size {block_size} was not trained; this model supports {list(cfg.block_sizes)}")


def fill_block(session: Session, sampler: Sampler, rule: UnmaskConfig, block: np.ndarray, memory: np.ndarray,
               counters: Counters, events: list, start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unmask every MASK in `block` (in place), a block placed at `start` (default: after the sequence).
    Returns (block, q) with q[i] the distribution position i was drawn from (its row for verification); q is
    None when greedy, where verification reads only the bytes."""
    mask_id = session.config.mask_id
    greedy = sampler.cfg.greedy
    q = None if greedy else np.zeros((block.size, session.config.vocab_size))
    steps = 0
    while True:
        masked = np.flatnonzero(block == mask_id)
        if masked.size == 0:
            break
        logits = session.block_logits(session.block_states(block, start), memory, bidirectional=True, start=start)
        dists = sampler.soft(logits[masked])  # rows already unmasked are never read again
        pick = select(rule, dists)
        chosen = masked[pick]
        if greedy:  # the argmax of a row's distribution is its greedy byte (blocked ids have probability 0)
            ids = dists[pick].argmax(-1)
        else:
            q[chosen] = sampler.probs(logits[chosen])
            ids = np.array([sampler.draw(row) for row in q[chosen]])
        block[chosen] = ids
        steps += 1
        events.append({"type": "unmask", "step": steps, "positions": chosen.tolist(), "ids": ids.tolist(),
                       "confidences": dists[pick, ids].tolist()})
    counters.n_dec["diffusion_step"] += steps
    counters.steps_per_block.append(steps)
    return block, q


def prepare(config, options: dict, default_start: str | None = None) -> dict:
    """Checks block size, unmasking rule and block start; fills the mode's default block start."""
    check_model(config, options.get("block_size", 8))
    if options.get("unmask") is not None:
        options["unmask"].validate()
    if options.get("block_start") is None:
        options["block_start"] = default_start or BLOCK_START
    if options["block_start"] not in BLOCK_STARTS:
        raise ValueError(f"block_start={options['block_start']!r}; valid values are {list(BLOCK_STARTS)}")
    return options


def slack(options: dict) -> int:
    """A block at the open patch's start re-reads up to B/2 committed rows; a forced one none."""
    return options["block_size"] // 2 if options["block_start"] == "patch" else 0


def open_block(session: Session, block_size: int, block_start: str, first: int | None = None):
    """(start, block, memory) of the next diffusion block: known bytes (and `first`, an exact next byte) then
    MASK, with every row reading the anchor's latent."""
    start, latent = session.block_anchor(block_size, block_start)
    block = np.full(block_size, session.config.mask_id, dtype=np.int64)
    known = session.ids[start:]
    block[: len(known)] = known
    if first is not None:
        block[len(known)] = first
    return start, block, np.repeat(latent[None], block_size, axis=0)


BLOCK_START = "patch"  # the trained layout; as many graph calls per byte as "forced" (docs/architecture.md)


def run(session: Session, sampler: Sampler, budget: int, counters: Counters, block_size: int = 8,
        unmask: UnmaskConfig | None = None, block_start: str = BLOCK_START, **_options) -> Iterator[dict]:
    check_model(session.config, block_size)
    rule = (unmask or UnmaskConfig()).validate()
    produced = 0
    while produced < budget:
        start, block, memory = open_block(session, block_size, block_start)
        known = session.length - start
        events: list = []
        block, _ = fill_block(session, sampler, rule, block, memory, counters, events, start)
        yield from events
        counters.iterations += 1
        counters.paper_n_enc += 1
        counters.paper_n_dec += counters.steps_per_block[-1]
        ids = block[known:].tolist()
        if EOS in ids:  # EOS ends the generation inside the block
            ids = ids[: ids.index(EOS) + 1]
            yield {"type": "commit", "ids": ids}
            return
        # the next block's latent in the same global call; the new rows' decoder pass in its first step
        session.commit(ids, open_latent=block_start == "forced", defer_decoder=True)
        counters.n_dec["commit"] += 1
        produced += len(ids)
        yield {"type": "commit", "ids": ids}
