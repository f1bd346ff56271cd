"""The patcher's θ search: reaches a target mean patch length, and says why when no θ can."""

from __future__ import annotations

import numpy as np
import pytest

from fastblt.graphs.training.calibrate import CalibrationError, search_threshold


def test_threshold_search():
    rng = np.random.default_rng(0)
    rows = [rng.exponential(1.0, 300) for _ in range(5)]
    theta, got = search_threshold(rows, 4.0, 8)
    assert abs(got - 4.0) < 0.1
    with pytest.raises(CalibrationError, match="exceeds max_patch_length=8"):
        search_threshold(rows, 9.0, 8)
    with pytest.raises(CalibrationError, match="out of reach"):
        search_threshold([r[:10] for r in rows], 7.9, 8)
