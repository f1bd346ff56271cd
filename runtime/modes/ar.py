"""AR: plain BLT decoding, one committed byte per decoder call (the paper's baseline)."""

from __future__ import annotations

from collections.abc import Iterator

from fastblt.runtime.host import EOS
from fastblt.runtime.sampling import Sampler
from fastblt.runtime.session import Session


def run(session: Session, sampler: Sampler, budget: int, **_options) -> Iterator[dict]:
    """Yield one event per committed byte until the caller stops iterating or the budget is spent."""
    logits = session.logits()
    for _ in range(budget):
        byte_id = sampler.sample(logits)
        if byte_id == EOS:  # nothing follows EOS: no need to run the graphs on it
            yield {"type": "commit", "ids": [byte_id]}
            return
        logits = session.commit([byte_id])[-1]
        yield {"type": "commit", "ids": [byte_id]}
