"""AR: plain BLT decoding, one committed byte per decoder call (the paper's baseline)."""

from __future__ import annotations

from collections.abc import Iterator

from fastblt.runtime.counters import Counters
from fastblt.runtime.host import EOS
from fastblt.runtime.sampling import Sampler
from fastblt.runtime.session import Session


def prepare(config, options: dict) -> dict:
    return options


def slack(options: dict) -> int:
    return 0


def run(session: Session, sampler: Sampler, budget: int, counters: Counters, **_options) -> Iterator[dict]:
    logits = session.logits()
    for _ in range(budget):
        byte_id = sampler.sample(logits)
        counters.paper_n_dec += 1
        if byte_id == EOS:  # nothing follows EOS: no need to run the graphs on it
            yield {"type": "commit", "ids": [byte_id]}
            return
        closed = session.n_closed
        logits = session.commit([byte_id])[-1]
        counters.n_dec["ar_step"] += 1
        counters.paper_n_enc += session.n_closed - closed
        yield {"type": "commit", "ids": [byte_id]}
