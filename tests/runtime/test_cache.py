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


def test_visible_copy_is_reused_only_while_the_entries_are_unchanged():
    cache = KVCache(n_layers=1, heads=1, head_dim=2, window=8, slack=2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        cache.append(*rng.standard_normal((2, 1, 1, 1, 1, 2)).astype(np.float32))
    first = cache.visible(4)
    assert cache.visible(4)[0] is first[0]  # same prefix: no new copy
    cache.truncate(3)
    cache.append(*np.full((2, 1, 1, 1, 1, 2), 7.0, dtype=np.float32))  # rewrites position 3
    k, _ = cache.visible(4)
    assert (k[..., 3, :] == 7.0).all() and np.array_equal(k[..., :3, :], first[0][..., :3, :])
    start = cache.start
    for _ in range(80):  # compaction moves entries: the copy follows
        cache.append(*rng.standard_normal((2, 1, 1, 1, 1, 2)).astype(np.float32))
    k, _ = cache.visible()
    assert cache.start > start and np.array_equal(k, cache.k[:, :, :, cache.length - 7:cache.length])
