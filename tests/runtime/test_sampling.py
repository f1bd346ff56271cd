"""The sampler refuses non-finite logits with one clear error instead of picking an arbitrary id."""

from __future__ import annotations

import numpy as np
import pytest

from fastblt.runtime.sampling import NonFiniteLogits, Sampler, SamplingConfig


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_are_one_clear_error(temperature, bad):
    sampler = Sampler(SamplingConfig(temperature=temperature, seed=0), 260)
    logits = np.zeros(260, np.float32)
    logits[70] = 5.0
    assert sampler.sample(logits) == 70 or temperature > 0
    logits[3] = bad
    with pytest.raises(NonFiniteLogits, match="non-finite logits.*overflowed its precision.*fp32"):
        sampler.sample(logits)
    with pytest.raises(NonFiniteLogits):
        sampler.argmax(logits[None])
