"""Which masked block positions a diffusion step fills: confidence α, entropy-bounded γ, or all at once.

Selection reads only each position's predicted distribution (max probability, entropy), never the
probability of the byte that was sampled, so left-to-right selection keeps verification exact (§2.8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("confidence", "entropy", "one_step")
EB_VARIANTS = ("paper", "eb_sampler")
ORDERS = ("any", "left_to_right")


@dataclass(frozen=True)
class UnmaskConfig:
    rule: str = "confidence"
    alpha: float = 0.7
    gamma: float = 1.0
    eb_variant: str = "paper"  # paper: ΣH ≤ γ; eb_sampler (Ben-Hamu et al.): ΣH − max H ≤ γ
    order: str = "any"

    def validate(self) -> UnmaskConfig:
        if self.rule not in RULES:
            raise ValueError(f"unmasking rule {self.rule!r}; valid rules are {list(RULES)}")
        if not (isinstance(self.alpha, int | float) and 0.0 < self.alpha <= 1.0):
            raise ValueError(f"alpha={self.alpha!r} must be in (0, 1] (a confidence threshold)")
        if not (isinstance(self.gamma, int | float) and self.gamma > 0.0):
            raise ValueError(f"gamma={self.gamma!r} must be > 0 (an entropy budget in nats)")
        if self.eb_variant not in EB_VARIANTS:
            raise ValueError(f"eb_variant {self.eb_variant!r}; valid variants are {list(EB_VARIANTS)}")
        if self.order not in ORDERS:
            raise ValueError(f"order {self.order!r}; valid orders are {list(ORDERS)}")
        return self


def entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


def _leading(ok: np.ndarray) -> int:
    """Length of the leading run of True values."""
    return ok.size if ok.all() else int(np.argmin(ok))


def select(cfg: UnmaskConfig, dists: np.ndarray) -> np.ndarray:
    """Which of the still-masked positions to unmask now, as ascending indices into them; never empty.
    `dists`: [m, V], the distribution of each still-masked position in block order (left to right)."""
    m = dists.shape[0]
    if cfg.rule == "one_step":
        return np.arange(m)
    if cfg.rule == "confidence":
        score = dists.max(-1)
        ok = score > cfg.alpha
        if cfg.order == "left_to_right":
            return np.arange(max(_leading(ok), 1))
        return np.flatnonzero(ok) if ok.any() else np.array([int(np.argmax(score))])
    h = entropy(dists)
    order = np.arange(m) if cfg.order == "left_to_right" else np.argsort(h, kind="stable")
    csum = np.cumsum(h[order])
    budget = csum - np.maximum.accumulate(h[order]) if cfg.eb_variant == "eb_sampler" else csum
    n = max(_leading(budget <= cfg.gamma), 1)
    return np.sort(order[:n])
