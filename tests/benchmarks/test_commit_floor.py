"""commit_floor: the split of BLT-D's graph time into one commit per block and the diffusion steps."""

from __future__ import annotations

import pytest

from fastblt.benchmarks.commit_floor import block_cost


def test_block_cost_splits_commit_and_steps_and_bounds_the_speedup():
    # 10 blocks of 8 bytes, 30 steps: per block patcher 1, global 3, decoder_step 2 and one encoder call (1 ms of
    # the 40 encoder calls' 40 ms); per step the other 30 encoder ms / 30 and decoder_block 60 / 30
    ms = {"patcher": 10.0, "global": 30.0, "decoder_step": 20.0, "encoder": 40.0, "decoder_block": 60.0}
    calls = {"patcher": 10, "global": 10, "decoder_step": 10, "encoder": 40, "decoder_block": 30}
    cost = block_cost(ms, calls, blocks=10, steps=30, seconds=0.2, new_bytes=80)
    assert cost.commit_ms == pytest.approx(7.0) and cost.step_ms == pytest.approx(3.0)
    assert cost.bytes_per_block == 8 and cost.steps == 3 and cost.outside == pytest.approx(0.2)
    # AR at 1 ms per byte: a block of s steps costs (7 + 3 s) / 0.8 ms for 8 bytes
    assert cost.speedup(1.0, 0) == pytest.approx(8 / (7 / 0.8))
    assert cost.speedup(1.0, 3) == pytest.approx(8 / (16 / 0.8))
    assert cost.speedup(1.0, 0) > cost.speedup(1.0, 1) > cost.speedup(1.0, 3)
