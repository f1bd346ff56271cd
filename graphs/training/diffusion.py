"""The BLT-D training objective (docs/training.md): next-byte loss plus block-diffusion loss.

One block of B bytes starts at every patch start s_i (i ≥ 1). Its bytes are masked with probability t
(one t ~ U(0,1) per sequence) and the decoder predicts them, weighted 1/t. Block rows run through the very
graph cores inference uses — encoder in scratch mode and decoder over a read-only prefix cache — with the
clean pass's K/V as that cache and a bias that allows, for a block starting at s:
  * clean keys at positions < s only (never its own clean twin or anything after s), within the window;
  * keys of its own block only (causal in the encoder, bidirectional in the decoder), never another block
    (computed blockwise, so R block rows cost O(R·(n+B)), not O(R²));
  * cross-attention to o_{i-1}, the latent of the patch ending right before s (bytes < s only).
So the training layout is the inference layout, and a mask leak is a test failure, not a silent copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastblt.graphs.layers import NEG


@dataclass
class Blocks:
    start: torch.Tensor  # [b, nb] first position of each block
    patch: torch.Tensor  # [b, nb] patch index i whose start is the block's start (memory row i-1)
    valid: torch.Tensor  # [b, nb] real blocks (batches pad with dummies)
    target: torch.Tensor  # [b, nb, B] clean ids (PAD past the sequence)
    size: int


def make_blocks(starts: torch.Tensor, ids_full: torch.Tensor, block_size: int, pad_id: int) -> Blocks:
    """Blocks at every patch start in 1..n-1 (n = clean length; ids_full has n+1 ids: the last is a target)."""
    b, n1 = starts.shape
    n = n1 - 1
    flags = starts[:, :n].clone()
    flags[:, 0] = False  # the BOS patch gets no block
    nb = max(int(flags.sum(1).max()), 1)
    pos = torch.arange(n, device=starts.device).expand(b, n)
    order = torch.argsort((~flags).to(torch.int8), dim=1, stable=True)[:, :nb]  # flagged positions first
    start = torch.gather(pos, 1, order)
    valid = torch.gather(flags, 1, order)
    patch = torch.cumsum(starts[:, :n].long(), dim=1) - 1
    patch = torch.gather(patch, 1, order)
    offs = start[..., None] + torch.arange(block_size, device=starts.device)
    inside = offs < ids_full.shape[1]
    target = torch.gather(ids_full, 1, offs.clamp(max=ids_full.shape[1] - 1).view(b, -1)).view(b, nb, block_size)
    target = torch.where(inside & valid[..., None], target, pad_id)
    return Blocks(start, patch, valid, target, block_size)


def uniform(shape, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U(0, 1) draws from `gen` on its own device, then moved: a CPU generator gives the same noise to a
    model on a GPU as on the CPU."""
    return torch.rand(shape, generator=gen, device=gen.device if gen is not None else device).to(device)


def noise(blocks: Blocks, t: torch.Tensor, mask_id: int, pad_id: int, gen: torch.Generator | None = None):
    """Mask each real (non-PAD) block byte with probability t (per sequence). Returns (noisy ids, masked)."""
    u = uniform(blocks.target.shape, gen, blocks.target.device)
    masked = (u < t[:, None, None]) & (blocks.target != pad_id)
    return torch.where(masked, mask_id, blocks.target), masked


def block_bias(blocks: Blocks, n: int, window: int | None) -> torch.Tensor:
    """Additive bias [b, 1, R, n] of the R = nb·B block rows over the n clean keys: only keys before the
    block's start, within the window. (Each block sees itself through `inner_bias`, never another block.)"""
    b, nb = blocks.start.shape
    bsz = blocks.size
    row_pos = (blocks.start[..., None] + torch.arange(bsz, device=blocks.start.device)).view(b, -1)
    row_start = blocks.start.repeat_interleave(bsz, dim=1)
    key = torch.arange(n, device=row_pos.device)
    ok = key[None, None, :] < row_start[..., None]
    if window is not None:
        ok = ok & (row_pos[..., None] - key[None, None, :] < window)
    ok = ok & blocks.valid.repeat_interleave(bsz, dim=1)[..., None]
    return torch.where(ok, 0.0, NEG)[:, None]


def inner_bias(size: int, bidirectional: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """[B, B] bias within one block: all visible (decoder, diffusion) or causal (encoder)."""
    ok = torch.ones(size, size, dtype=torch.bool, device=device)
    if not bidirectional:
        ok = torch.tril(ok)
    return torch.where(ok, 0.0, NEG)


def block_hash_ids(model, ids_full: torch.Tensor, blocks: Blocks, noisy: torch.Tensor) -> torch.Tensor:
    """Hash n-grams of block rows: clean ids before the block start, noisy block ids from it on."""
    gmax = max(model.config.hash_sizes)
    b, nb, bsz = noisy.shape
    back = torch.arange(-(gmax - 1), 0, device=noisy.device)
    idx = blocks.start[..., None] + back
    prefix = torch.gather(ids_full, 1, idx.clamp(min=0).view(b, -1)).view(b, nb, gmax - 1)
    prefix = torch.where(idx >= 0, prefix, 0)
    ctx = torch.cat([prefix, noisy], dim=2).view(b * nb, -1)
    return model.hash_ids(ctx)[:, gmax - 1:].reshape(b, nb * bsz, -1)


def block_logits(model, ids_full, details, blocks: Blocks, noisy: torch.Tensor,
                 bidirectional: bool = True) -> torch.Tensor:
    """Decoder logits [b, nb, B, V] of the (noisy) blocks, through encoder-scratch + decoder-block cores
    (block rows bidirectional for diffusion, causal for drafting)."""
    cfg = model.config
    b, nb, bsz = noisy.shape
    n = details["states"].shape[1]
    positions = (blocks.start[..., None] + torch.arange(bsz, device=noisy.device)).view(b, -1)
    enc_bias = block_bias(blocks, n, cfg.encoder.window)
    enc = model.local_encoder
    x = model.encoder_embed(noisy.view(b, -1), model.hash_embeds(block_hash_ids(model, ids_full, blocks, noisy)))
    states, _, _ = enc.run(x, positions, enc_bias, *details["encoder_kv"], inner=inner_bias(bsz, False, noisy.device))
    memory = details["memory"][torch.arange(b, device=noisy.device)[:, None], (blocks.patch - 1).clamp(min=0)]
    memory = memory.repeat_interleave(bsz, dim=1)
    dec_bias = block_bias(blocks, n, cfg.decoder.window)
    logits, _, _ = model.decoder_step(states, positions, memory, dec_bias, *details["decoder_kv"],
                                      inner=inner_bias(bsz, bidirectional, noisy.device))
    return logits.view(b, nb, bsz, -1)


@torch.no_grad()
def greedy_targets(model, ids_full, details, blocks: Blocks) -> torch.Tensor:
    """The model's own greedy continuation [b, nb, B] from each block start: the first byte from the clean
    pass (exact), the rest drafted causally with the block's latent held fixed (BLT-S's stale conditioning,
    which greedy verification accepts ~94% of the time on the default model). These are the bytes BLT-DV and
    BLT-S verification accept, so training the block rows on them makes drafts that get accepted."""
    cfg = model.config
    b, nb = blocks.start.shape
    banned = [i for i in (cfg.mask_id, cfg.pad_id) if i is not None]
    rows = torch.arange(b, device=ids_full.device)[:, None]

    def pick(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float().clone()
        logits[..., banned] = float("-inf")
        return logits.argmax(-1)

    roll = torch.full_like(blocks.target, cfg.mask_id)
    roll[..., 0] = pick(details["logits"][rows, (blocks.start - 1).clamp(min=0)])
    for j in range(1, blocks.size):
        roll[..., j] = pick(block_logits(model, ids_full, details, blocks, roll, bidirectional=False)[..., j - 1, :])
    return torch.where(blocks.target != cfg.pad_id, roll, cfg.pad_id)


def _rows(x, rows: torch.Tensor):
    """The given batch rows of a Blocks or a forward_details dict (its K/V caches are [layers, b, ...])."""
    if isinstance(x, Blocks):
        return Blocks(x.start[rows], x.patch[rows], x.valid[rows], x.target[rows], x.size)
    out = {k: v[rows] for k, v in x.items() if isinstance(v, torch.Tensor)}
    out.update({k: tuple(t[:, rows] for t in x[k]) for k in ("encoder_kv", "decoder_kv")})
    return out


def bltd_loss(model, ids_full: torch.Tensor, block_size: int, entropies: torch.Tensor | None = None,
              gen: torch.Generator | None = None, t: torch.Tensor | None = None,
              mask_weight: float = 1.0, distill: float = 0.0) -> dict[str, torch.Tensor]:
    """L = L_clean + λ·L_mask on a batch of n+1 ids (the last id is only a target); λ = 1 is the paper's sum.

    `distill`: the fraction of sequences whose block targets are the model's own greedy continuation
    (`greedy_targets`) instead of the data; L_clean always stays on the data, so next-byte prediction keeps
    learning the text while the block rows learn what verification accepts."""
    cfg = model.config
    if cfg.mask_id is None or cfg.pad_id is None:
        raise ValueError("BLT-D training needs mask_id and pad_id in the config (vocab_size ≥ 262)")
    ids, targets = ids_full[:, :-1], ids_full[:, 1:]
    details = model.forward_details(ids, entropies)
    logits = details["logits"]
    clean_ok = targets != cfg.pad_id
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    clean = (ce * clean_ok).sum() / clean_ok.sum().clamp(min=1)
    blocks = make_blocks(details["starts"], ids_full, block_size, cfg.pad_id)
    b = ids.shape[0]
    if distill > 0:
        chosen = uniform(b, gen, ids.device) < distill
        if chosen.any():  # roll out only the chosen sequences: the rollout costs B - 1 decoder passes
            rows = chosen.nonzero()[:, 0]
            target = blocks.target.clone()
            target[rows] = greedy_targets(model, ids_full[rows], _rows(details, rows), _rows(blocks, rows))
            blocks.target = target
    if t is None:
        t = uniform(b, gen, ids.device).clamp(min=1e-3)
    noisy, masked = noise(blocks, t, cfg.mask_id, cfg.pad_id, gen)
    blk = block_logits(model, ids_full, details, blocks, noisy)
    ce_b = F.cross_entropy(blk.float().permute(0, 3, 1, 2), blocks.target, reduction="none")
    real = (blocks.target != cfg.pad_id).sum().clamp(min=1)
    mask_loss = ((ce_b * masked).sum(dim=(1, 2)) / t).sum() / real
    n_masked = masked.sum().clamp(min=1)
    correct = ((blk.argmax(-1) == blocks.target) & masked).sum()
    return {
        "loss": clean + mask_weight * mask_loss,
        "clean_loss": clean.detach(),
        "mask_loss": mask_loss.detach(),
        "masked_ce": ((ce_b * masked).sum() / n_masked).detach(),
        "masked_acc": (correct / n_masked).detach(),
        "n_masked": masked.sum().detach(),
        "clean_tokens": clean_ok.sum().detach(),
        "bytes_per_patch": (clean_ok.sum() / details["n_patches"].sum()).detach(),
    }
