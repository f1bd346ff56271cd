"""Training loop: AdamW + cosine, bf16 autocast, clipping, resumable safetensors checkpoints,
torchrun/gloo data parallelism (DDP) on the CPU or one process on a CUDA GPU, a progress bar, periodic held-out
evaluation.

Three objectives share the loop: "patcher" (the entropy model's next-byte loss), "bltd" (next-byte +
block diffusion, everything but the patcher) and "decoder" (the same loss, only the decoder trains: adapting
an existing BLT to diffusion).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastblt.graphs.checkpoint import save_model
from fastblt.graphs.config import SUPPORTED_BLOCK_SIZES
from fastblt.graphs.constants import BYTE_VOCAB
from fastblt.graphs.training.data import Stream, batches, corpus_documents, heldout_windows
from fastblt.graphs.training.diffusion import bltd_loss
from fastblt.graphs.training.evaluate import evaluate
from fastblt.graphs.training.train_state import load_state, save_state

OBJECTIVES = ("patcher", "bltd", "decoder")
LN2 = math.log(2.0)


class TrainError(ValueError):
    """A training setting or a resume checkpoint is invalid."""


def native_bf16() -> bool:
    """bf16 autocast only where the CPU computes bf16 natively (AVX512-BF16 or AMX): on an AVX2-only CPU
    it is emulated, and a training step measured 8x slower than fp32."""
    cpu = torch.cpu
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except AttributeError:  # private probes: absent in some torch builds
        return False


def check_device(device: str) -> None:
    """A clear error for a device this torch cannot use (a CPU-only wheel, no GPU, a bad name)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise TrainError(f"device {device!r} is not a torch device name; use 'cpu' or 'cuda[:N]'") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise TrainError(f"device {device!r}: training runs on 'cpu' or 'cuda[:N]'")
    if not torch.cuda.is_available():
        raise TrainError(f"device {device!r}: this torch ({torch.__version__}) sees no CUDA GPU; train with "
                         "--device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU")
    if (dev.index or 0) >= torch.cuda.device_count():
        raise TrainError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "bltd"
    steps: int = 1000
    seq_len: int = 512
    batch_size: int = 4
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    block_sizes: tuple[int, ...] = (4, 8, 16)
    block_probs: tuple[float, ...] = (0.4, 0.4, 0.2)
    mask_weight: float = 1.0  # λ in L_clean + λ·L_mask; 1 is the paper's unweighted sum
    distill: float = 0.0  # fraction of sequences whose block targets are the model's greedy continuation
    corpora: tuple[str, ...] = ("stdlib",)
    eval_every: int = 250
    eval_windows: int = 48
    ckpt_every: int = 100
    seed: int = 0
    bf16: bool = field(default_factory=lambda: native_bf16())
    log_every: int = 10
    device: str = "cpu"  # or "cuda" / "cuda:N": one GPU, one process (random draws stay on the CPU generator)

    def validate(self, model_cfg) -> TrainConfig:
        check_device(self.device)
        if self.objective not in OBJECTIVES:
            raise TrainError(f"objective={self.objective!r}; valid objectives are {list(OBJECTIVES)}")
        for name in ("steps", "seq_len", "batch_size", "eval_every", "ckpt_every", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise TrainError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.objective != "patcher":
            if model_cfg.mask_id is None or model_cfg.pad_id is None:
                raise TrainError("BLT-D training needs a config with mask_id and pad_id (vocab_size ≥ 262)")
            window = model_cfg.decoder.window
            for b in self.block_sizes:
                if b not in SUPPORTED_BLOCK_SIZES:
                    raise TrainError(f"block size {b}; allowed values are {list(SUPPORTED_BLOCK_SIZES)}")
                if window is not None and b >= window:
                    raise TrainError(f"block size {b} must be smaller than the local window ({window}): a block "
                                     "row must see its whole block")
            if len(self.block_probs) != len(self.block_sizes) or abs(sum(self.block_probs) - 1) > 1e-6:
                raise TrainError("block_probs must give one probability per block size, summing to 1")
            if not 0.0 <= self.distill <= 1.0:
                raise TrainError(f"distill={self.distill!r} must be a fraction in [0, 1]")
            if not self.mask_weight > 0:
                raise TrainError(f"mask_weight={self.mask_weight!r} must be > 0 (the decoder must learn to unmask; "
                                 "1.0 is the paper's unweighted L_clean + L_mask)")
        return self

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        frac = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def trainable_prefixes(objective: str) -> tuple[str, ...]:
    if objective == "patcher":
        return ("patcher.",)
    if objective == "decoder":
        return ("local_decoder.", "lm_head.", "local_encoder.embed_tokens.")
    return ("local_encoder.", "encoder_hash_tok_embedding.", "global_transformer.", "local_decoder.", "lm_head.")


class Objective(nn.Module):
    """The loss as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model, objective: str, mask_weight: float = 1.0, distill: float = 0.0) -> None:
        super().__init__()
        self.model, self.objective, self.mask_weight, self.distill = model, objective, mask_weight, distill

    def forward(self, ids_full: torch.Tensor, block_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        model, pad = self.model, self.model.config.pad_id
        if self.objective == "patcher":
            ids, targets = ids_full[:, :-1], ids_full[:, 1:]
            pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
            p = model.patcher
            x, _, _ = p.run(p.embed_tokens(ids), pos, _causal(p.cfg, pos), *p.empty_cache(ids.shape[0], ids))
            logits = p.lm_head(p.norm(x)).float()
            ok = targets != pad if pad is not None else torch.ones_like(targets, dtype=torch.bool)
            ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            loss = (ce * ok).sum() / ok.sum().clamp(min=1)
            return {"loss": loss, "clean_loss": loss.detach(), "clean_tokens": ok.sum()}
        with torch.no_grad():
            ids = ids_full[:, :-1]
            pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
            entropies, _, _ = model.patcher_step(ids, pos, *model.patcher.empty_cache(ids.shape[0], ids))
        return bltd_loss(model, ids_full, block_size, entropies=entropies.float(), gen=gen,
                         mask_weight=self.mask_weight, distill=self.distill)


def _causal(cfg, pos):
    from fastblt.graphs.layers import window_bias

    return window_bias(pos, pos, cfg.window)


@dataclass
class Trainer:
    model: nn.Module
    cfg: TrainConfig
    run_dir: Path
    rank: int = 0
    world: int = 1
    history: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cfg.validate(self.model.config)
        if self.world > 1 and torch.device(self.cfg.device).type != "cpu":
            raise TrainError(f"device {self.cfg.device!r} with {self.world} processes: data parallelism runs on the "
                             "CPU (gloo); train on one GPU with a single process (no torchrun)")
        self.model.to(self.cfg.device)
        self.run_dir = Path(self.run_dir)
        prefixes = trainable_prefixes(self.cfg.objective)
        for name, p in self.model.named_parameters():
            p.requires_grad_(name.startswith(prefixes))
        if self.cfg.objective == "decoder":
            # frozen encoder: only the new MASK/PAD embedding rows learn, byte rows keep their values
            def keep_byte_rows(grad: torch.Tensor) -> torch.Tensor:
                grad = grad.clone()
                grad[:BYTE_VOCAB] = 0
                return grad

            self.model.local_encoder.embed_tokens.weight.register_hook(keep_byte_rows)
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if p.dim() >= 2 and "embed" not in n]
        no_decay = [p for n, p in params if not (p.dim() >= 2 and "embed" not in n)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=self.cfg.lr, betas=self.cfg.betas, eps=1e-8)
        self.objective = Objective(self.model, self.cfg.objective, self.cfg.mask_weight, self.cfg.distill)
        self.step = 0
        self.bytes_seen = 0
        self.seconds = 0.0
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.objective)
        else:
            self.ddp = self.objective

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / f"ckpt-{self.cfg.objective}"

    def resume(self) -> bool:
        if not (self.ckpt_dir / "state.json").exists():
            return False
        state = load_state(self.ckpt_dir, self.model, self.opt)
        self.step, self.bytes_seen = state["step"], state["bytes_seen"]
        self.seconds, self.history = state["seconds"], state.get("history", [])
        return True

    def save(self) -> None:
        if self.rank == 0:
            save_state(self.ckpt_dir, self.model, self.opt, {
                "step": self.step, "bytes_seen": self.bytes_seen, "seconds": self.seconds,
                "history": self.history, "train_config": asdict(self.cfg)})

    def batches(self) -> Iterator[torch.Tensor]:
        docs = corpus_documents(list(self.cfg.corpora), "train")
        pad = self.model.config.pad_id if self.model.config.pad_id is not None else 0
        stream = Stream(docs, self.cfg.seq_len, self.cfg.seed, self.rank, self.world)
        for rows in batches(stream, self.cfg.batch_size, pad, skip=self.step):
            yield torch.tensor(rows, dtype=torch.long).to(self.cfg.device, non_blocking=True)

    def train(self, progress: bool = True) -> list[dict]:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank + 7919 * self.step)
        pick = torch.Generator().manual_seed(cfg.seed + self.step)
        bar = None
        if progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.objective, dynamic_ncols=True)
        data = self.batches()
        window_start, window_bytes = time.perf_counter(), 0
        self.model.train()
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            ids_full = next(data)
            idx = int(torch.multinomial(torch.tensor(cfg.block_probs), 1, generator=pick))
            block = cfg.block_sizes[idx]
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr_at(self.step)
            with torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
                out = self.ddp(ids_full, block, gen)
            self.opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                  cfg.clip)
            if not torch.isfinite(norm):
                raise TrainError(f"non-finite gradient norm at step {self.step}; lower the learning rate")
            self.opt.step()
            self.step += 1
            n_bytes = int(out["clean_tokens"]) * self.world
            self.bytes_seen += n_bytes
            window_bytes += n_bytes
            self.seconds += time.perf_counter() - t0
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                rate = window_bytes / max(time.perf_counter() - window_start, 1e-9)
                window_start, window_bytes = time.perf_counter(), 0
                row = {"step": self.step, "lr": cfg.lr_at(self.step), "loss": float(out["loss"].detach()),
                       "bpb": float(out["clean_loss"]) / LN2, "bytes_per_s": rate, "bytes_seen": self.bytes_seen}
                if "masked_acc" in out:
                    row.update(block=block, masked_acc=float(out["masked_acc"]), mask_loss=float(out["mask_loss"]))
                self._log(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.3f}", bpb=f"{row['bpb']:.3f}",
                                    acc=f"{row.get('masked_acc', 0):.2f}", Bps=f"{rate:.0f}")
            if bar is not None:
                bar.update(1)
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                self.history.append(self.evaluate())
                self.model.train()
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.save()
        if bar is not None:
            bar.close()
        return self.history

    def evaluate(self) -> dict:
        """Held-out next-byte bits per byte, and (BLT-D) one-step all-masked accuracy per block size."""
        cfg = self.cfg
        result = {"step": self.step, "bytes_seen": self.bytes_seen, "seconds": round(self.seconds, 1)}
        if cfg.objective == "patcher":
            result.update(self._patcher_eval())
        else:
            result.update(evaluate(self.model, cfg.corpora, cfg.seq_len, cfg.eval_windows, bf16=cfg.bf16))
        self._log({"eval": result})
        return result

    @torch.no_grad()
    def _patcher_eval(self) -> dict:
        self.model.eval()
        rows = heldout_windows(list(self.cfg.corpora), self.cfg.seq_len, self.cfg.eval_windows)
        ce_sum, n_tok = 0.0, 0
        for row in rows:
            out = self.objective(torch.tensor([row], device=self.cfg.device), 4, None)
            ce_sum += float(out["clean_loss"]) * int(out["clean_tokens"])
            n_tok += int(out["clean_tokens"])
        return {"heldout_bpb": ce_sum / max(n_tok, 1) / LN2}

    def _log(self, row: dict) -> None:
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "log.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def init_distributed() -> tuple[int, int]:
    """(rank, world) under torchrun (gloo), or (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def export_model(model, out: Path, dtype=torch.bfloat16, card: str | None = None, extra: dict | None = None) -> Path:
    return save_model(model, out, dtype=dtype, extra_files={**({"README.md": card} if card else {}), **(extra or {})})
