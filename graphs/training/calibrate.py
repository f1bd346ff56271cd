"""Pick the patching threshold θ by search so held-out text averages a target patch length."""

from __future__ import annotations

import numpy as np
import torch

from fastblt.graphs.patching import patch_lengths, patch_starts


class CalibrationError(ValueError):
    """The requested average patch length cannot be reached."""


@torch.no_grad()
def entropies(model, rows: list[list[int]]) -> list[np.ndarray]:
    out = []
    for row in rows:
        ids = torch.tensor([row])
        pos = torch.arange(ids.shape[1])[None]
        h, _, _ = model.patcher_step(ids, pos, *model.patcher.empty_cache(1, model.lm_head.weight))
        out.append(h[0].float().numpy())
    return out


def mean_patch_length(rows: list[np.ndarray], theta: float, max_len: int | None) -> float:
    n = sum(r.size for r in rows)
    patches = sum(len(patch_lengths(patch_starts(r, theta, max_len))) for r in rows)
    return n / patches


def search_threshold(rows: list[np.ndarray], target: float, max_len: int | None) -> tuple[float, float]:
    """(θ, achieved mean patch length) with the mean as close to `target` as bisection gets."""
    if not rows:
        raise CalibrationError("no held-out text to calibrate the patch threshold on")
    if max_len is not None and target > max_len:
        raise CalibrationError(f"target patch size {target} exceeds max_patch_length={max_len}; no θ reaches it")
    if target < 1:
        raise CalibrationError(f"target patch size {target} is below 1 byte; no θ reaches it")
    allh = np.concatenate(rows)
    lo, hi = float(allh.min()) - 1.0, float(allh.max()) + 1.0
    top = mean_patch_length(rows, hi, max_len)
    if top < target:
        raise CalibrationError(f"target patch size {target} is out of reach: even θ=∞ gives {top:.2f} bytes per "
                               "patch on the held-out text (longer windows or a larger max_patch_length needed)")
    for _ in range(40):
        mid = (lo + hi) / 2
        if mean_patch_length(rows, mid, max_len) < target:
            lo = mid
        else:
            hi = mid
    low, high = mean_patch_length(rows, lo, max_len), mean_patch_length(rows, hi, max_len)
    theta, achieved = (lo, low) if abs(low - target) <= abs(high - target) else (hi, high)
    return theta, achieved
