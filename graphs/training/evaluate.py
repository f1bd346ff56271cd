"""Held-out evaluation: next-byte bits per byte and one-step all-masked block accuracy (inference layout)."""

from __future__ import annotations

import math

import torch

from fastblt.graphs.training.data import heldout_windows
from fastblt.graphs.training.diffusion import bltd_loss

LN2 = math.log(2.0)


@torch.no_grad()
def evaluate(model, corpora=("stdlib",), seq_len: int = 512, max_windows: int = 48, per_doc: int = 2,
             bf16: bool = False, batch: int = 8) -> dict:
    """bits/byte of the clean next-byte loss over held-out windows; for a BLT-D, the accuracy of predicting
    every byte of a fully masked block in one decoder step, per trained block size."""
    model.eval()
    cfg = model.config
    rows = heldout_windows(list(corpora), seq_len, max_windows, per_doc=per_doc)
    pad = cfg.pad_id if cfg.pad_id is not None else 0
    device = next(model.parameters()).device
    ce_sum, n_tok = 0.0, 0
    acc = {b: [0.0, 0] for b in cfg.block_sizes}
    gen = torch.Generator().manual_seed(1234)
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        width = max(len(r) for r in chunk)
        ids_full = torch.tensor([r + [pad] * (width - len(r)) for r in chunk], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if cfg.diffusion_trained:
                for b in cfg.block_sizes:
                    out = bltd_loss(model, ids_full, b, gen=gen, t=torch.ones(ids_full.shape[0], device=device))
                    acc[b][0] += float(out["masked_acc"]) * int(out["n_masked"])
                    acc[b][1] += int(out["n_masked"])
                clean, tokens = float(out["clean_loss"]), int(out["clean_tokens"])
            else:
                logits = model(ids_full[:, :-1]).float()
                targets = ids_full[:, 1:]
                ok = targets != pad
                ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
                clean, tokens = float((ce * ok).sum() / ok.sum()), int(ok.sum())
        ce_sum += clean * tokens
        n_tok += tokens
    result = {"heldout_bpb": ce_sum / max(n_tok, 1) / LN2, "heldout_bytes": n_tok, "windows": len(rows)}
    if cfg.diffusion_trained:
        result["masked_acc_one_step"] = {str(b): a / max(n, 1) for b, (a, n) in acc.items()}
    return result
