"""The BLT-D training pipeline: patcher → θ search → BLT-D → exported model with a model card.
Every stage resumes from its checkpoint in the run directory; a finished stage is never repeated."""

from __future__ import annotations

import dataclasses
import json
import sysconfig
from pathlib import Path

import torch

from fastblt.graphs.config import BltConfig
from fastblt.graphs.constants import BYTE_VOCAB, DIFFUSION_VOCAB, MASK_ID, OFFSET, PAD_ID
from fastblt.graphs.model import BltModel
from fastblt.graphs.training.calibrate import entropies, search_threshold
from fastblt.graphs.training.data import heldout_windows
from fastblt.graphs.training.train import TrainConfig, Trainer, TrainError, export_model, init_distributed
from fastblt.graphs.training.train_state import load_weights


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def calibrate(model: BltModel, corpora, seq_len: int, target: float, max_len: int | None) -> dict:
    rows = heldout_windows(list(corpora), seq_len, 64)
    theta, achieved = search_threshold(entropies(model, rows), target, max_len)
    return {"patch_threshold": theta, "target_patch_size": target, "mean_patch_size": achieved,
            "max_patch_length": max_len, "heldout_windows": len(rows)}


def train_bltd(run_dir: Path, model_cfg: BltConfig, patcher_tc: TrainConfig, main_tc: TrainConfig,
               target_patch: float = 4.0, out: Path | None = None, progress: bool = True, seed: int = 0,
               init_from: Path | None = None) -> Path:
    """`init_from`: continue from a trained BLT-D (its patcher, θ and weights; the patcher stage is skipped)."""
    rank, world = init_distributed()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    calib_path, cfg_path = run_dir / "patcher.json", run_dir / "model_config.json"
    start = None
    if init_from is not None:
        start = _warm_start(Path(init_from), main_tc.block_sizes)
        if rank == 0 and not calib_path.exists():
            cfg_path.write_text(start.config.to_json())
            calib_path.write_text(json.dumps(_lineage(Path(init_from))["patching"], indent=2))
        _barrier(world)
    if not calib_path.exists():
        torch.manual_seed(seed)
        model = BltModel(model_cfg)
        trainer = Trainer(model, patcher_tc, run_dir, rank, world)
        trainer.resume()
        trainer.train(progress)
        calib = calibrate(model.eval(), patcher_tc.corpora, patcher_tc.seq_len, target_patch,
                          model_cfg.max_patch_length)
        calib["patcher_heldout_bpb"] = trainer.history[-1]["heldout_bpb"] if trainer.history else None
        if rank == 0:
            cfg = dataclasses.replace(model_cfg, patch_threshold=calib["patch_threshold"])
            cfg_path.write_text(cfg.to_json())
            calib_path.write_text(json.dumps(calib, indent=2))
        _barrier(world)
    cfg = BltConfig.load(cfg_path)
    torch.manual_seed(seed + 1)
    model = BltModel(cfg)
    trainer = Trainer(model, main_tc, run_dir, rank, world)
    if not trainer.resume():
        if start is not None:  # first start of a continuation: every weight from the earlier model
            model.load_state_dict(start.state_dict())
        else:  # first start of stage 2: take the trained patcher
            patcher = BltModel(cfg)
            load_weights(run_dir / "ckpt-patcher", patcher)
            model.patcher.load_state_dict(patcher.patcher.state_dict())
    trainer.train(progress)
    out = Path(out or run_dir / "model")
    if rank == 0:
        prior = _lineage(Path(init_from))["stages"] if init_from is not None else []
        record = training_record(json.loads(calib_path.read_text()), patcher_tc, main_tc, trainer, prior,
                                 init_from is None)
        export_model(model.eval(), out, card=model_card(cfg, record),
                     extra={"training.json": json.dumps(record, indent=2)})
    _barrier(world)
    return out


TRAINING_FILE = "training.json"


def training_record(calib: dict, patcher_tc: TrainConfig | None, tc: TrainConfig, trainer: Trainer, prior: list[dict],
                    from_scratch: bool) -> dict:
    """What the model card states, machine-readable (written next to the weights as training.json), so a
    continuation can carry the lineage forward: patching calibration plus one entry per training stage."""
    stage = {"objective": tc.objective, "init": "scratch" if from_scratch else "continued", "steps": trainer.step,
             "processes": trainer.world, "batch_size": tc.batch_size, "seq_len": tc.seq_len, "lr": tc.lr,
             "warmup": tc.warmup, "block_sizes": list(tc.block_sizes), "block_probs": list(tc.block_probs),
             "mask_weight": tc.mask_weight, "distill": tc.distill, "precision": "bf16" if tc.bf16 else "fp32",
             "corpora": list(tc.corpora), "device": _device_name(tc.device), "bytes_seen": trainer.bytes_seen,
             **({"stdlib": sysconfig.get_python_version()} if "stdlib" in tc.corpora else {}),
             "seconds": round(trainer.seconds, 1),
             "history": trainer.history}
    patching = dict(calib)
    if from_scratch:
        patching.update(patcher_steps=patcher_tc.steps, patcher_batch=[trainer.world, patcher_tc.batch_size,
                                                                       patcher_tc.seq_len])
    return {"format": "fastblt-training", "format_version": 1, "patching": patching, "stages": [*prior, stage]}


def model_card(cfg: BltConfig, record: dict) -> str:
    from fastblt.graphs.params import param_counts

    calib, stages = record["patching"], record["stages"]
    last = next((h for st in reversed(stages) for h in reversed(st["history"]) if "heldout_bpb" in h), {})
    acc = last.get("masked_acc_one_step", {})
    counts = param_counts(cfg)
    patcher = (f"{calib['patcher_steps']} steps × {' × '.join(map(str, calib['patcher_batch']))} bytes; "
               if "patcher_steps" in calib else "")
    lines = [
        "# fastblt default model (BLT-D)",
        "",
        "A small Byte Latent Transformer with a block-diffusion-trained local decoder, trained from scratch on CPU",
        "by `blt-export train` (fastblt's own pipeline). Weights: bf16 safetensors; config: `config.json`;",
        "training record: `training.json`.",
        "",
        "| | |",
        "|---|---|",
        f"| data | Python standard library sources of CPython {_stdlib_version(stages)}, test folders "
        f"excluded{_more_data(stages)}; held out: files with CRC32(path) % 20 == 0 |",
        f"| components (params) | patcher {counts['patcher']:,}, encoder {counts['encoder']:,}, hash tables "
        f"{counts['hash_embeddings']:,}, global {counts['global']:,}, decoder {counts['decoder']:,} |",
        f"| global : decoder | {counts['global'] / counts['decoder']:.1f} : 1 |",
        f"| patcher training | {patcher}held-out bpb {calib.get('patcher_heldout_bpb') or float('nan'):.3f} |",
        f"| patching | θ = {calib['patch_threshold']:.4f} nats, max patch length {calib['max_patch_length']}, "
        f"measured mean patch length {calib['mean_patch_size']:.2f} bytes (target {calib['target_patch_size']}) |",
    ]
    for i, st in enumerate(stages, 1):
        lines.append(f"| BLT-D stage {i} ({_stage_kind(st)}) | {_stage_text(st)} |")
    lines += [
        f"| bytes seen (all BLT-D stages) | {sum(st['bytes_seen'] for st in stages):,} |",
        f"| wall time (all BLT-D stages) | {sum(st['seconds'] for st in stages) / 3600:.2f} h |",
        f"| held-out next-byte bits/byte ({last.get('windows', '?')} windows at the last evaluation) | "
        f"{last.get('heldout_bpb', float('nan')):.3f} |",
        "| one-step all-masked byte accuracy (inference layout) | "
        + ", ".join(f"B={b}: {a:.3f}" for b, a in acc.items()) + " |",
        "",
        "Reproduce the held-out number on every held-out byte: `blt-export eval` (docs/training.md).",
        "",
    ]
    return "\n".join(lines)


def _stage_kind(st: dict) -> str:
    return st["init"] + (", decoder only" if st.get("objective") == "decoder" else "")


def _device_name(device: str) -> str:
    return "cpu" if device == "cpu" else f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def _stdlib_version(stages: list[dict]) -> str:
    """The interpreter whose stdlib the stages read (records before this field: the running one's)."""
    return next((st["stdlib"] for st in stages if "stdlib" in st), sysconfig.get_python_version())


def _more_data(stages: list[dict]) -> str:
    first = next((i for i, st in enumerate(stages, 1) if st.get("corpora", ["stdlib"]) != ["stdlib"]), None)
    return "" if first is None else f", from stage {first} on also the corpora its row names"


def _corpora_text(corpora: list[str]) -> str:
    """'stdlib ×3, mixed': a corpus named n times is sampled n times as often."""
    names = [Path(c).name for c in corpora]
    return ", ".join(n + (f" ×{names.count(n)}" if names.count(n) > 1 else "") for n in dict.fromkeys(names))


def _stage_text(st: dict) -> str:
    corpora = st.get("corpora", ["stdlib"])
    data = "" if corpora == ["stdlib"] else f"corpora {_corpora_text(corpora)}; "
    on = f" on {st['device']}" if st.get("device", "cpu") != "cpu" else ""
    distill = (f", {st['distill']:g} of sequences with the model's greedy continuation as block targets"
               if st.get("distill") else "")
    return (f"{st['steps']} steps × {st['processes']} process(es) × {st['batch_size']} × {st['seq_len']} bytes, "
            f"{data}block sizes {st['block_sizes']} (p = {st['block_probs']}), "
            f"loss L_clean + {st.get('mask_weight', 1.0):g}·L_mask{distill}, lr {st['lr']} cosine, "
            f"{st.get('precision', 'bf16')}{on}; {st['bytes_seen']:,} bytes, {st['seconds'] / 3600:.2f} h")


def _lineage(path: Path) -> dict:
    """The training record of an earlier model; a model trained elsewhere gets one built from its config."""
    rec = path / TRAINING_FILE
    if rec.is_file():
        try:
            return json.loads(rec.read_text())
        except ValueError as exc:
            raise TrainError(f"{rec}: not valid JSON ({exc}); delete it to continue without the lineage") from None
    from fastblt.graphs.checkpoint import read_config

    cfg = read_config(path)[0] if (path / "config.json").is_file() else None
    return {"patching": {"patch_threshold": cfg.patch_threshold if cfg else float("nan"),
                         "max_patch_length": cfg.max_patch_length if cfg else None,
                         "mean_patch_size": float("nan"), "target_patch_size": None}, "stages": []}


def _warm_start(path: Path, block_sizes: tuple[int, ...]) -> BltModel:
    """The model to continue from, with MASK/PAD ids added if it has none (its patcher and θ are kept)."""
    from fastblt.graphs.checkpoint import load_model

    return with_diffusion_vocab(load_model(path), block_sizes).float()


def with_diffusion_vocab(model: BltModel, block_sizes: tuple[int, ...]) -> BltModel:
    """The same BLT with MASK (260) and PAD (261) ids added where missing; byte rows are copied exactly."""
    cfg = model.config
    if cfg.mask_id is not None and cfg.pad_id is not None:
        new_cfg = dataclasses.replace(cfg, block_sizes=block_sizes)
    else:
        new_cfg = dataclasses.replace(cfg, vocab_size=max(cfg.vocab_size, DIFFUSION_VOCAB), mask_id=MASK_ID,
                                      pad_id=PAD_ID, block_sizes=block_sizes)
    new = BltModel(new_cfg.validate())
    state = new.state_dict()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            target = state[name]
            if target.shape == value.shape:
                target.copy_(value)
            else:  # vocabulary-sized rows: copy the old ones, initialise the new ones
                target.zero_()
                target[: value.shape[0]] = value
                if name == "local_encoder.embed_tokens.weight":
                    target[value.shape[0]:] = value[OFFSET:BYTE_VOCAB].mean(0)
    new.load_state_dict(state)
    return new


def adapt_decoder(checkpoint: Path, run_dir: Path, tc: TrainConfig, out: Path | None = None,
                  progress: bool = True) -> Path:
    """Train only the decoder (and the MASK/PAD embeddings) of an existing BLT with the BLT-D objective."""
    from fastblt.graphs.checkpoint import load_model, stored_dtype

    rank, world = init_distributed()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = with_diffusion_vocab(load_model(checkpoint), tc.block_sizes)
    trainer = Trainer(model, tc, run_dir, rank, world)
    trainer.resume()
    trainer.train(progress)
    out = Path(out or run_dir / "model")
    if rank == 0:
        lineage = _lineage(Path(checkpoint))
        record = training_record(lineage["patching"], None, tc, trainer, lineage["stages"], False)
        export_model(model.eval(), out, dtype=stored_dtype(checkpoint), card=model_card(model.config, record),
                     extra={TRAINING_FILE: json.dumps(record, indent=2)})
    _barrier(world)
    return out
