"""The host patch rule (numpy): batch = incremental = the PyTorch forward's rule; runtime.host uses the same
functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastblt.graphs import patching
from fastblt.graphs.config import tiny_config
from fastblt.graphs.model import BltModel
from fastblt.runtime import host


@pytest.mark.parametrize("max_len", [None, 1, 3, 8])
def test_patch_rules_agree(max_len):
    rng = np.random.default_rng(2)
    ent = rng.exponential(1.0, size=(3, 120)).astype(np.float32)
    model = BltModel(tiny_config(patch_threshold=1.2, max_patch_length=max_len))
    batch = model.patch_starts(torch.from_numpy(ent)).numpy()
    for row in range(3):
        starts = patching.patch_starts(ent[row], 1.2, max_len)
        assert (starts == batch[row]).all()
        assert starts[0] and starts[1]
        cur = 0
        for n in range(1, 121):  # the incremental rule reproduces the batch rule
            is_start = patching.next_is_start(float(ent[row, n - 1]), n, cur, 1.2, max_len)
            assert is_start == starts[n]
            cur = n if is_start else cur
        lengths = patching.patch_lengths(starts)
        assert sum(lengths) == 120
        if max_len:
            assert max(lengths) <= max_len
        e, d = patching.patch_ids(starts)
        assert d[0] == 0 and (d <= e).all() and (d >= e - 1).all()


def test_the_runtime_applies_this_rule():
    assert host.patch_starts is patching.patch_starts and host.next_is_start is patching.next_is_start
