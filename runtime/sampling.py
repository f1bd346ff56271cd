"""Next-byte selection on numpy logits: greedy, temperature, top-k, top-p, with a per-request seed.

Only bytes and EOS can be emitted; BOS/BOE/delimiter and the diffusion MASK/PAD ids are never sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastblt.runtime.host import EOS, OFFSET


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None

    def validate(self) -> SamplingConfig:
        if not (isinstance(self.temperature, int | float) and 0.0 <= self.temperature <= 100.0):
            raise ValueError(f"temperature={self.temperature!r} must be in [0, 100] (0 = greedy)")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k={self.top_k!r} must be an integer ≥ 0 (0 = off)")
        if not (isinstance(self.top_p, int | float) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1] (1 = off)")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def allowed_mask(vocab: int) -> np.ndarray:
    ok = np.zeros(vocab, dtype=bool)
    ok[OFFSET:OFFSET + 256] = True
    ok[EOS] = True
    return ok


class NonFiniteLogits(RuntimeError):
    """A graph returned NaN or inf logits (e.g. a half-precision graph that overflowed)."""


def finite(logits: np.ndarray) -> np.ndarray:
    """`logits`, or one clear error when any is NaN or inf: argmax would otherwise pick an arbitrary id."""
    if not np.isfinite(logits).all():
        raise NonFiniteLogits("the model returned non-finite logits (NaN or inf), so no byte can be chosen; a graph "
                              "overflowed its precision: compare with the bundle's fp32 precision and report the "
                              "bundle and precision")
    return logits


class Sampler:
    def __init__(self, cfg: SamplingConfig, vocab: int) -> None:
        self.cfg = cfg.validate()
        self.rng = np.random.default_rng(cfg.seed)
        self.blocked = ~allowed_mask(vocab)
        self._floor = np.where(self.blocked, -np.inf, 0.0).astype(np.float32)  # added to logits: blocked ids lose

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The distribution actually sampled from (after temperature, top-k, top-p), rows sum to 1."""
        x = np.array(finite(logits), dtype=np.float64)
        x[..., self.blocked] = -np.inf
        if self.cfg.greedy:
            p = np.zeros_like(x)
            np.put_along_axis(p, x.argmax(-1)[..., None], 1.0, axis=-1)
            return p
        x = x / self.cfg.temperature
        if self.cfg.top_k:
            kth = np.sort(x, axis=-1)[..., -self.cfg.top_k][..., None]
            x = np.where(x < kth, -np.inf, x)
        p = np.exp(x - x.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        if self.cfg.top_p < 1.0:
            order = np.argsort(-p, axis=-1)
            sorted_p = np.take_along_axis(p, order, -1)
            keep_sorted = np.cumsum(sorted_p, -1) - sorted_p < self.cfg.top_p
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, -1)
            p = np.where(keep, p, 0.0)
            p /= p.sum(-1, keepdims=True)
        return p

    def argmax(self, logits: np.ndarray) -> np.ndarray:
        """The greedy choice of each row (never a blocked id)."""
        return (finite(logits) + self._floor).argmax(-1)

    def sample(self, logits: np.ndarray) -> int:
        if self.cfg.greedy:
            return int((finite(logits) + self._floor).argmax())
        return self.draw(self.probs(logits))

    def draw(self, p: np.ndarray) -> int:
        """One id from a distribution (argmax when greedy, so greedy runs consume no randomness)."""
        if self.cfg.greedy:
            return int(np.argmax(p))
        return int(self.rng.choice(p.size, p=p / p.sum()))

    def soft(self, logits: np.ndarray) -> np.ndarray:
        """The distribution confidences and entropies are read from: the warped one when sampling, the plain
        softmax (temperature 1) when greedy, where the warped one is a point mass."""
        if not self.cfg.greedy:
            return self.probs(logits)
        x = np.asarray(logits, dtype=np.float64) + self._floor  # a new array: the updates below are in place
        x -= x.max(-1, keepdims=True)
        np.exp(x, out=x)
        x /= x.sum(-1, keepdims=True)
        return x

    def accept(self, token: int, p: np.ndarray, q: np.ndarray) -> bool:
        """Speculative-sampling test: accept a draft `token` drawn from q with probability min(1, p/q)."""
        if q[token] <= 0:
            return p[token] > 0 and self.cfg.greedy
        ratio = p[token] / q[token]
        if ratio >= 1.0:
            return True
        if ratio <= 0.0:
            return False
        return bool(self.rng.random() < ratio)

    def residual(self, p: np.ndarray, q: np.ndarray) -> int:
        """The replacement after a rejection: a draw from norm(max(0, p - q)), which keeps the output
        distributed exactly as p (Leviathan et al. 2023)."""
        r = np.maximum(p - q, 0.0)
        total = r.sum()
        return self.draw(r / total if total > 1e-12 else p)
