"""KVCache: entries addressed by absolute position survive compaction; the filled length stays bounded."""

import numpy as np
import pytest

from fastblt.runtime.cache import COMPACT_EVERY, KVCache


def _entry(positions):
    """[layers=2, 1, heads=1, t, d=1] entries whose value is their absolute position."""
    return np.asarray(positions, np.float32).reshape(1, 1, 1, -1, 1).repeat(2, axis=0)


def test_windowed_cache_compacts_in_place_and_keeps_window_plus_slack():
    cache = KVCache(2, 1, 1, window=16, slack=4)
    k_buffer = cache.k
    filled = []
    for pos in range(300):
        cache.append(_entry([pos]), _entry([pos]))
        filled.append(cache.length)
        assert cache.k[0, 0, 0, cache.length - 1, 0] == pos  # newest entry at the end
        lo = cache.end - min(cache.length, 15)
        assert np.array_equal(cache.visible()[0][0, 0, 0, :, 0], np.arange(lo, cache.end))
    assert cache.k is k_buffer  # compaction moves entries inside the same buffers (IO bindings stay valid)
    assert max(filled) <= cache.keep + COMPACT_EVERY and cache.start > 0
    slots = np.arange(cache.length)
    assert np.array_equal(cache.v[1, 0, 0, :cache.length, 0], cache.start + slots)  # slot i = position start+i


def test_prefill_longer_than_the_buffer_then_rollback_within_slack():
    cache = KVCache(2, 1, 1, window=16, slack=4)
    cache.reserve(500)  # a long prompt in one in-place call: the buffer grows
    cache.k[:, :, :, :500] = _entry(range(500))
    cache.advance(500)
    cache.append(_entry([500]), _entry([500]))  # the next call first compacts to window - 1 + slack
    assert (cache.start, cache.length) == (500 - cache.keep, cache.keep + 1)
    assert cache.k[0, 0, 0, 0, 0] == cache.start
    cache.truncate(501 - 4)  # roll back `slack` bytes
    assert cache.end == 497
    with pytest.raises(ValueError, match="rollback depth"):
        cache.truncate(cache.start - 1)
