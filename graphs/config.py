"""Model configuration: frozen dataclasses with a validated JSON round trip (torch-free).

One config describes the released BLT family (entropy patcher, local encoder with hash n-grams, global
transformer, local decoder) plus what BLT-D adds (MASK/PAD ids, trained block sizes). Every error names the
field and the allowed values, because configs are hand-edited and imported from other formats.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastblt.graphs.constants import BYTE_VOCAB, HASH_PRIMES

FORMAT_VERSION = 1
SUPPORTED_BLOCK_SIZES = (4, 8, 16, 32)


class ConfigError(ValueError):
    """A config field is missing, unknown or out of range; the message names the field and the fix."""


def swiglu_hidden(dim: int, multiple_of: int = 256, ffn_mult: float = 1.0) -> int:
    """BLT's FFN width rule: 8/3·dim, scaled, rounded up to a multiple (768→2048, 1024→2816)."""
    hidden = int(ffn_mult * int(8 * dim / 3))
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass(frozen=True)
class TransformerConfig:
    """One pre-norm RoPE transformer stack (patcher, encoder, global or decoder)."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    ffn_dim: int | None = None
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    window: int | None = None  # causal sliding window (keys incl. the query); None = unbounded
    max_positions: int = 24576

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden(self) -> int:
        return self.ffn_dim or swiglu_hidden(self.dim)

    def validate(self, where: str) -> None:
        for name in ("dim", "n_layers", "n_heads", "max_positions"):
            _positive_int(f"{where}.{name}", getattr(self, name))
        if self.n_kv_heads is not None:
            _positive_int(f"{where}.n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise ConfigError(f"{where}.n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.ffn_dim is not None:
            _positive_int(f"{where}.ffn_dim", self.ffn_dim)
        if self.dim % self.n_heads or self.head_dim % 2:
            raise ConfigError(
                f"{where}.dim={self.dim} must be n_heads={self.n_heads} × an even head_dim (RoPE rotates pairs)"
            )
        if self.window is not None:
            _positive_int(f"{where}.window", self.window)
        if not (isinstance(self.rope_theta, int | float) and self.rope_theta > 0):
            raise ConfigError(f"{where}.rope_theta={self.rope_theta!r} must be a positive number")
        if not (isinstance(self.norm_eps, int | float) and 0 < self.norm_eps < 1):
            raise ConfigError(f"{where}.norm_eps={self.norm_eps!r} must be in (0, 1)")


@dataclass(frozen=True)
class BltConfig:
    """A whole BLT. Ids: bytes are value+4; BOE=0, BOS=1, EOS=2; BLT-D adds MASK and PAD above 259."""

    patcher: TransformerConfig
    encoder: TransformerConfig
    global_transformer: TransformerConfig
    decoder: TransformerConfig
    vocab_size: int = BYTE_VOCAB
    cross_attn_k: int = 2
    decoder_cross_attn_all_layers: bool = True
    hash_sizes: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    hash_vocab: int = 500002
    hash_functions: int = 1
    patch_threshold: float = 1.335442066192627
    max_patch_length: int | None = None
    mask_id: int | None = None
    pad_id: int | None = None
    block_sizes: tuple[int, ...] = field(default_factory=tuple)  # block sizes the decoder was diffusion-trained on

    @property
    def n_hash_tables(self) -> int:
        return self.hash_functions * len(self.hash_sizes)

    @property
    def diffusion_trained(self) -> bool:
        return bool(self.block_sizes)

    def validate(self) -> BltConfig:
        for name in ("patcher", "encoder", "global_transformer", "decoder"):
            sub = getattr(self, name)
            if not isinstance(sub, TransformerConfig):
                raise ConfigError(f"{name} must be an object with the fields of TransformerConfig")
            sub.validate(name)
        if self.encoder.dim != self.decoder.dim:
            raise ConfigError(
                f"encoder.dim={self.encoder.dim} and decoder.dim={self.decoder.dim} must be equal: "
                "the decoder reads the encoder's byte states"
            )
        _positive_int("cross_attn_k", self.cross_attn_k)
        _positive_int("hash_vocab", self.hash_vocab)
        _positive_int("hash_functions", self.hash_functions)
        if self.hash_functions > len(HASH_PRIMES):
            raise ConfigError(f"hash_functions={self.hash_functions} must be ≤ {len(HASH_PRIMES)} (known primes)")
        if not self.hash_sizes or any(not isinstance(g, int) or g < 1 for g in self.hash_sizes):
            raise ConfigError(f"hash_sizes={list(self.hash_sizes)} must be a non-empty list of n-gram sizes ≥ 1")
        if not isinstance(self.patch_threshold, int | float) or math.isnan(self.patch_threshold):
            raise ConfigError(f"patch_threshold={self.patch_threshold!r} must be a number (nats)")
        if self.max_patch_length is not None:
            _positive_int("max_patch_length", self.max_patch_length)
        specials = [i for i in (self.mask_id, self.pad_id) if i is not None]
        need = BYTE_VOCAB + len(specials)
        if self.vocab_size < need:
            raise ConfigError(f"vocab_size={self.vocab_size} must be ≥ {need} (260 byte ids + MASK/PAD)")
        for name in ("mask_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and not (BYTE_VOCAB <= value < self.vocab_size):
                raise ConfigError(f"{name}={value} must be in [{BYTE_VOCAB}, vocab_size={self.vocab_size})")
        if self.mask_id is not None and self.mask_id == self.pad_id:
            raise ConfigError("mask_id and pad_id must differ")
        for b in self.block_sizes:
            if b not in SUPPORTED_BLOCK_SIZES:
                raise ConfigError(f"block_sizes contains {b}; allowed values are {list(SUPPORTED_BLOCK_SIZES)}")
            if self.decoder.window is not None and b >= self.decoder.window:
                raise ConfigError(f"block size {b} must be smaller than decoder.window={self.decoder.window}")
        if self.block_sizes and self.mask_id is None:
            raise ConfigError("block_sizes is set (diffusion-trained decoder) but mask_id is missing")
        return self

    # ---- JSON -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hash_sizes"] = list(self.hash_sizes)
        d["block_sizes"] = list(self.block_sizes)
        return {"format": "fastblt", "format_version": FORMAT_VERSION, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> BltConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", "fastblt")
        version = data.pop("format_version", FORMAT_VERSION)
        if fmt != "fastblt":
            raise ConfigError(f"{source}: format={fmt!r} is not a fastblt config (expected 'fastblt')")
        if version != FORMAT_VERSION:
            raise ConfigError(f"{source}: format_version={version!r} is not supported (this fastblt reads "
                              f"{FORMAT_VERSION})")
        _check_keys(source, data, cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ConfigError(f"{source}: required field {f.name!r} is missing")
                continue
            value = data[f.name]
            if f.name in ("patcher", "encoder", "global_transformer", "decoder"):
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: {f.name} must be an object")
                _check_keys(f"{source}: {f.name}", value, TransformerConfig)
                try:
                    value = TransformerConfig(**value)
                except TypeError as exc:
                    raise ConfigError(f"{source}: {f.name}: {exc}") from None
            elif f.name in ("hash_sizes", "block_sizes"):
                if not isinstance(value, list | tuple):
                    raise ConfigError(f"{source}: {f.name} must be a list of integers")
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs).validate()

    @classmethod
    def from_json(cls, text: str, source: str = "config.json") -> BltConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> BltConfig:
        path = Path(path)
        return cls.from_json(path.read_text(encoding="utf-8"), str(path))


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def _check_keys(source: str, data: dict[str, Any], cls: type) -> None:
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown}; allowed fields are {allowed}")


def tiny_config(window: int = 64, **overrides: Any) -> BltConfig:
    """A ~200k-parameter BLT for tests and smoke runs; `window` is the local attention window."""
    local = dict(dim=32, n_heads=4, ffn_dim=64, window=window, max_positions=4096)
    base = dict(
        patcher=TransformerConfig(n_layers=1, rope_theta=10000.0, **local),
        encoder=TransformerConfig(n_layers=1, **local),
        global_transformer=TransformerConfig(dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_positions=1024),
        decoder=TransformerConfig(n_layers=2, **local),
        hash_sizes=(3, 4, 5),
        hash_vocab=257,
        patch_threshold=5.4,
        max_patch_length=8,
    )
    base.update(overrides)
    return BltConfig(**base).validate()


def default_config() -> BltConfig:
    """The shipped default BLT-D: a global transformer ~8× the local decoder (as in the paper's 1B), small
    enough to train on a CPU in hours and to ship as ≤ 40 MB of bf16 safetensors."""
    local = dict(dim=128, n_heads=4, ffn_dim=384, window=256)
    return BltConfig(
        patcher=TransformerConfig(dim=128, n_layers=2, n_heads=4, ffn_dim=384, rope_theta=10000.0, window=512),
        encoder=TransformerConfig(n_layers=1, **local),
        global_transformer=TransformerConfig(dim=320, n_layers=6, n_heads=5, ffn_dim=864, max_positions=8192),
        decoder=TransformerConfig(n_layers=3, **local),
        vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8, 16),
        hash_sizes=(3, 4, 5, 6, 7, 8), hash_vocab=6007, patch_threshold=2.0, max_patch_length=8,
    ).validate()


PRESETS = {"tiny": tiny_config, "default": default_config}
