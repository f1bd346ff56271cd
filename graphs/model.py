"""The PyTorch BLT: components with explicit caches, and the full-sequence forward built from them.

The full forward is literally the chain of graph cores run once with empty caches (patcher → boundaries →
encoder → per-patch pooling + global → decoder), so training, HF parity and the incremental graphs share
one implementation of every layer. Submodule names equal HF BLT checkpoint keys minus the `model.` prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastblt.graphs.config import BltConfig
from fastblt.graphs.constants import BYTE_VOCAB, HASH_PRIMES
from fastblt.graphs.layers import NEG, CrossAttention, RMSNorm, Stack, past_positions, window_bias


def _stack_bias(cfg, positions: torch.Tensor, past_len) -> torch.Tensor:
    keys = torch.cat([past_positions(positions, past_len), positions], dim=1)
    return window_bias(positions, keys, cfg.window)


class Patcher(Stack):
    """Small causal byte LM whose next-byte entropy places patch boundaries."""

    def __init__(self, cfg: BltConfig) -> None:
        super().__init__(cfg.patcher)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.patcher.dim)
        self.norm = RMSNorm(cfg.patcher.dim, cfg.patcher.norm_eps)
        self.lm_head = nn.Linear(cfg.patcher.dim, cfg.vocab_size, bias=False)

    def step(self, ids, positions, past_k, past_v):
        x = self.embed_tokens(ids)
        x, k, v = self.run(x, positions, _stack_bias(self.cfg, positions, past_k.shape[3]), past_k, past_v)
        return self.entropy(x), k, v

    def entropy(self, x: torch.Tensor) -> torch.Tensor:
        """Next-byte entropy (nats) over BLT's 260-id vocabulary only, so MASK/PAD rows never move a boundary."""
        logp = F.log_softmax(self.lm_head(self.norm(x))[..., :BYTE_VOCAB].float(), dim=-1)
        return -(logp.exp() * logp).sum(-1)


class LocalEncoder(Stack):
    def __init__(self, cfg: BltConfig) -> None:
        super().__init__(cfg.encoder)
        d = cfg.encoder.dim
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d)
        self.patch_embedding_projection = nn.Linear(d, d * cfg.cross_attn_k, bias=False)
        self.cross_attn_layers = nn.ModuleList([CrossAttention(cfg.encoder)])


class GlobalTransformer(Stack):
    def __init__(self, cfg: BltConfig) -> None:
        super().__init__(cfg.global_transformer)
        width = cfg.encoder.dim * cfg.cross_attn_k
        if width != cfg.global_transformer.dim:
            self.token_embedding_projection = nn.Linear(width, cfg.global_transformer.dim, bias=False)
        else:
            self.token_embedding_projection = None


class LocalDecoder(Stack):
    def __init__(self, cfg: BltConfig) -> None:
        super().__init__(cfg.decoder)
        d = cfg.decoder.dim
        n_cross = cfg.decoder.n_layers if cfg.decoder_cross_attn_all_layers else 1
        self.cross_attn_layers = nn.ModuleList(CrossAttention(cfg.decoder) for _ in range(n_cross))
        self.patch_embedding_projection = nn.Linear(cfg.global_transformer.dim, d * cfg.cross_attn_k, bias=False)
        self.norm = RMSNorm(d, cfg.decoder.norm_eps)


class BltModel(nn.Module):
    """Calling it on [batch, n] ids (BOS first) returns logits [batch, n, vocab]; column v < 260 is id v."""

    def __init__(self, cfg: BltConfig) -> None:
        super().__init__()
        self.config = cfg.validate()
        self.patcher = Patcher(cfg)
        self.local_encoder = LocalEncoder(cfg)
        self.encoder_hash_tok_embedding = nn.Embedding(cfg.n_hash_tables * cfg.hash_vocab, cfg.encoder.dim)
        self.global_transformer = GlobalTransformer(cfg)
        self.local_decoder = LocalDecoder(cfg)
        self.lm_head = nn.Linear(cfg.decoder.dim, cfg.vocab_size, bias=False)

    # ---- graph cores (the incremental graphs wrap exactly these) ------------------------------------------
    def patcher_step(self, ids, positions, past_k, past_v):
        return self.patcher.step(ids, positions, past_k, past_v)

    def encoder_step(self, ids, hash_embeds, positions, past_k, past_v):
        enc = self.local_encoder
        x = self.encoder_embed(ids, hash_embeds)
        return enc.run(x, positions, _stack_bias(enc.cfg, positions, past_k.shape[3]), past_k, past_v)

    def encoder_embed(self, ids, hash_embeds):
        """Byte embedding + the byte's summed hash n-gram rows. The sum comes in as an input: the tables (3 B
        parameters at BLT-1B scale) never sit inside a graph; the runtime gathers them on the host."""
        return self.local_encoder.embed_tokens(ids) + hash_embeds

    def hash_embeds(self, hash_ids):
        """Sum of the hash-table rows [..., G] → [..., D], added left to right in float32, the order the
        runtime's host-side lookup (runtime/hash_table.py) uses, so both are bit-identical."""
        table = self.encoder_hash_tok_embedding
        acc = table(hash_ids[..., 0]).float()
        for g in range(1, hash_ids.shape[-1]):
            acc = acc + table(hash_ids[..., g]).float()
        return acc.to(table.weight.dtype)

    def global_step(self, patch_states, patch_mask, patch_positions, past_k, past_v):
        """Patches [b,P,L,D] (bytes padded, mask true on real bytes) → decoder memory [b,P,k,D]."""
        glob = self.global_transformer
        g = self.global_input(patch_states, patch_mask)
        g, k, v = glob.run(g, patch_positions, _stack_bias(glob.cfg, patch_positions, past_k.shape[3]), past_k, past_v)
        return self.global_output(g), k, v

    def global_input(self, patch_states, patch_mask):
        """Max-pool + cross-attention pooling of each patch's bytes → one global-transformer input per patch."""
        cfg, enc, glob = self.config, self.local_encoder, self.global_transformer
        b, p, _, d = patch_states.shape
        mask = patch_mask[..., None]
        pooled = torch.where(mask, patch_states, NEG).amax(dim=2)
        pooled = torch.where(mask.any(dim=2), pooled, 0.0)  # an empty patch pools to 0, as in BLT
        q = enc.patch_embedding_projection(pooled).view(b, p, cfg.cross_attn_k, d)
        key_bias = torch.where(patch_mask, 0.0, NEG)
        q = q + enc.cross_attn_layers[0](q, patch_states, key_bias)
        g = q.reshape(b, p, cfg.cross_attn_k * d)
        if glob.token_embedding_projection is not None:
            g = glob.token_embedding_projection(g)
        return g

    def global_output(self, g):
        """Global states [b,P,G] → the decoder's k memory slots per patch [b,P,k,D]."""
        b, p, _ = g.shape
        return self.local_decoder.patch_embedding_projection(g).view(b, p, self.config.cross_attn_k, -1)

    def decoder_step(self, states, positions, memory, bias, past_k, past_v, inner=None):
        """Byte states [b,t,D] + per-row memory [b,t,k,D] (slots of patch d(t)) → logits [b,t,V]."""
        dec = self.local_decoder
        x, k, v = dec.run(states, positions, bias, past_k, past_v, before_layer=self.decoder_cross(memory), inner=inner)
        return self.decoder_head(x), k, v

    def decoder_cross(self, memory):
        """The hook run before each decoder layer: cross-attention of every row to its memory slots."""
        layers = self.local_decoder.cross_attn_layers

        def cross(i: int, x: torch.Tensor) -> torch.Tensor:
            return x if i >= len(layers) else x + layers[i](x[:, :, None], memory)[:, :, 0]

        return cross

    def decoder_head(self, x):
        return self.lm_head(self.local_decoder.norm(x)).float()

    # ---- integer bookkeeping, torch form (runtime/host.py is the torch-free twin; tests compare) ----------
    def hash_ids(self, ids: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        gmax = max(cfg.hash_sizes)
        padded = F.pad(ids, (gmax - 1, 0))
        n = ids.shape[1]
        cols = []
        for f in range(cfg.hash_functions):
            prime = HASH_PRIMES[f % len(HASH_PRIMES)]
            for g in cfg.hash_sizes:
                acc = torch.zeros_like(ids)
                power = 1
                for i in range(g):
                    start = gmax - g + i
                    acc = acc + padded[:, start: start + n] * _as_int64(power)
                    power = (power * prime) & 0xFFFFFFFFFFFFFFFF
                cols.append(torch.remainder(acc, cfg.hash_vocab) + len(cols) * cfg.hash_vocab)
        return torch.stack(cols, dim=-1)

    def patch_starts(self, entropies: torch.Tensor) -> torch.Tensor:
        """Start flags [b, n+1] for positions 0..n (n = next byte), same rule as runtime.host.patch_starts."""
        cfg = self.config
        b, n = entropies.shape
        starts = torch.zeros(b, n + 1, dtype=torch.bool, device=entropies.device)
        starts[:, :2] = True
        starts[:, 2:] = entropies[:, 1:] > cfg.patch_threshold
        if cfg.max_patch_length is not None:
            pos = torch.arange(n + 1, device=entropies.device).expand(b, -1)
            last = torch.cummax(torch.where(starts, pos, 0), dim=1).values
            starts = starts | ((pos - last) % cfg.max_patch_length == 0)
        return starts

    # ---- full-sequence forward --------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_details(ids)["logits"]

    def forward_details(self, ids: torch.Tensor, entropies: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Full forward plus everything training needs (boundaries, memory, clean K/V of encoder and decoder).
        `entropies` may be given (e.g. from a frozen patcher under no_grad) to skip the patcher."""
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids must be an integer tensor [batch, n]; got {tuple(ids.shape)} {ids.dtype}")
        ids = ids.long()
        cfg = self.config
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_size):
            raise ValueError(f"ids must lie in [0, {cfg.vocab_size}); bytes are value+4 and BOS=1 comes first")
        b, n = ids.shape
        pos = torch.arange(n, device=ids.device).expand(b, n)
        like = self.lm_head.weight
        if entropies is None:
            entropies, _, _ = self.patcher_step(ids, pos, *self.patcher.empty_cache(b, like))
        starts = self.patch_starts(entropies)
        e = torch.cumsum(starts[:, :n].long(), dim=1) - 1
        d = torch.cumsum(starts[:, 1:].long(), dim=1) - 1
        states, enc_k, enc_v = self.encoder_step(ids, self.hash_embeds(self.hash_ids(ids)), pos,
                                                 *self.local_encoder.empty_cache(b, like))
        patch_states, patch_mask, n_patches = pad_patches(states, starts, e)
        p = patch_states.shape[1]
        ppos = torch.arange(p, device=ids.device).expand(b, p)
        memory, _, _ = self.global_step(patch_states, patch_mask, ppos, *self.global_transformer.empty_cache(b, like))
        rows = memory[torch.arange(b, device=ids.device)[:, None], d]
        bias = window_bias(pos, pos, cfg.decoder.window)
        logits, dec_k, dec_v = self.decoder_step(states, pos, rows, bias, *self.local_decoder.empty_cache(b, like))
        return {"logits": logits, "entropies": entropies, "starts": starts, "patch_ids": e,
                "decoder_patch_ids": d, "n_patches": n_patches, "states": states, "memory": memory,
                "encoder_kv": (enc_k, enc_v), "decoder_kv": (dec_k, dec_v)}


def pad_patches(states: torch.Tensor, starts: torch.Tensor, e: torch.Tensor):
    """Scatter byte states [b,n,D] into [b,P,L,D] by patch, with a mask of real bytes."""
    b, n, d = states.shape
    pos = torch.arange(n, device=states.device).expand(b, n)
    first = torch.cummax(torch.where(starts[:, :n], pos, 0), dim=1).values
    offset = pos - first
    n_patches = starts[:, :n].sum(dim=1)
    p, length = int(n_patches.max()), int(offset.max()) + 1
    bidx = torch.arange(b, device=states.device)[:, None].expand(b, n)
    padded = states.new_zeros(b, p, length, d)
    padded[bidx, e, offset] = states
    mask = torch.zeros(b, p, length, dtype=torch.bool, device=states.device)
    mask[bidx, e, offset] = True
    return padded, mask, n_patches


def _as_int64(value: int) -> int:
    """A 64-bit pattern as a signed Python int (so torch multiplies it with wrap-around)."""
    return value - (1 << 64) if value >= (1 << 63) else value
