"""`blt-export`: the build side — train, import, export and inspect checkpoints; build, quantize and check bundles."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

PRESETS = ("tiny", "default")
SHAPES = ("blt-1b", "blt-7b")  # the public BLT shapes (graphs/presets.py), written as HF-format checkpoints


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Turn BLT checkpoints into deployable bundles."""


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--out", required=True, type=click.Path(), help="Directory to write (config.json + safetensors).")
@click.option("--preset", type=click.Choice(PRESETS + SHAPES), default="tiny", show_default=True,
              help="tiny/default: a native fastblt checkpoint; blt-1b/blt-7b: the public shapes as an HF-format "
                   "checkpoint (sharded, written chunk by chunk, so a 4.6 B-parameter model needs no model memory).")
@click.option("--config", "config_path", type=click.Path(),
              help="A fastblt config.json, or an HF BLT config.json (model_type \"blt\"), instead of a preset.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Stored precision [default: bf16 for blt-1b/blt-7b and HF configs, fp32 otherwise].")
@click.option("--shard-size", default="2GiB", show_default=True,
              help="Largest weights file, e.g. 2GB, 500MB, 2GiB; bigger models are sharded with an index (a tensor "
                   "larger than this gets a shard of its own).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--diffusion", is_flag=True,
              help="A public shape with BLT-D's MASK/PAD ids and block sizes 4, 8, 16 (random init: all four modes "
                   "run).")
def init(out, preset, config_path, dtype, shard_size, seed, diffusion):
    """Write a randomly initialised model (the starting point for training, and for smoke tests)."""
    try:
        import torch

        from fastblt.graphs import BltConfig, save_model
        from fastblt.graphs.config import PRESETS as CONFIGS
        from fastblt.graphs.presets import init_checkpoint

        shard_bytes = _bytes(shard_size)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: None}[dtype]
        hf = _hf_config_file(config_path) if config_path else (preset if preset in SHAPES else None)
        if hf is not None and diffusion:
            from fastblt.graphs.presets import hf_preset, with_diffusion

            hf = with_diffusion(hf_preset(hf) if isinstance(hf, str) else hf)
        if hf is not None:
            path = init_checkpoint(out, hf, dtype=dtype, shard_bytes=shard_bytes, seed=seed)
        else:
            from fastblt.graphs.model import BltModel

            cfg = BltConfig.load(config_path) if config_path else CONFIGS[preset]()
            torch.manual_seed(seed)
            path = save_model(BltModel(cfg), out, dtype=dtype, max_shard_bytes=shard_bytes)
    except (ValueError, OSError) as exc:
        _fail(exc)
    files = sorted(p.name for p in Path(path).glob("*.safetensors"))
    click.echo(f"wrote {path} ({len(files)} weights file{'s' if len(files) > 1 else ''})")


def _hf_config_file(path: str):
    """The HF BLT config dict in `path`, or None when it is a fastblt config."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) and data.get("model_type") == "blt" else None


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20,
          "gib": 1 << 30, "tib": 1 << 40}


def _bytes(text: str) -> int:
    """'2GB' → 2·10⁹, '2GiB' → 2·2³⁰, '1048576' → bytes (HF's max_shard_size spelling)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise click.BadParameter(f"{text!r} is not a size; write e.g. 2GB, 500MB, 2GiB or a number of bytes",
                                 param_hint="--shard-size")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


@main.command()
@click.option("--run-dir", required=True, type=click.Path(), help="Checkpoints, logs; rerun to resume.")
@click.option("--out", type=click.Path(), help="Final model directory (default RUN_DIR/model).")
@click.option("--preset", type=click.Choice(PRESETS), default="default", show_default=True)
@click.option("--config", "config_path", type=click.Path(), help="A fastblt config.json instead of a preset.")
@click.option("--corpus", "corpora", multiple=True,
              help="'stdlib' (default) or a directory / .jsonl (repeatable; a corpus named n times is sampled "
                   "n times as often).")
@click.option("--patcher-steps", type=int, default=1500, show_default=True)
@click.option("--steps", type=int, default=20000, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--seq-len", type=int, default=512, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--block-sizes", default="4,8,16", show_default=True)
@click.option("--block-probs", default="0.4,0.4,0.2", show_default=True)
@click.option("--mask-weight", type=float, default=1.0, show_default=True,
              help="λ in L_clean + λ·L_mask (1 = the paper's unweighted sum; < 1 favours next-byte prediction).")
@click.option("--distill", type=float, default=0.0, show_default=True,
              help="Fraction of sequences whose block targets are the model's own greedy continuation.")
@click.option("--target-patch-size", type=float, default=4.0, show_default=True)
@click.option("--max-patch-length", type=int, default=8, show_default=True)
@click.option("--eval-every", type=int, default=500, show_default=True)
@click.option("--eval-windows", type=click.IntRange(min=1), default=48, show_default=True,
              help="Held-out windows of each evaluation (every --eval-every steps and at the end).")
@click.option("--ckpt-every", type=int, default=100, show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads per process (default: cores / processes).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="Autocast dtype; auto = bf16 where the CPU has native bf16 (AVX512-BF16/AMX), else fp32.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, or cuda[:N] (one GPU; with --precision auto it trains under bf16 autocast).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--init-from", type=click.Path(), default=None,
              help="Continue training this BLT (e.g. the bundled default model): all its weights, patcher and θ "
                   "are kept, the patcher stage is skipped; --preset/--config/--max-patch-length are ignored.")
def train(run_dir, out, preset, config_path, corpora, patcher_steps, steps, batch_size, seq_len, lr, block_sizes,
          block_probs, mask_weight, distill, target_patch_size, max_patch_length, eval_every, eval_windows, ckpt_every,
          threads, seed, precision, quiet, init_from, device):
    """Train a BLT-D from scratch (entropy patcher, θ search, then next-byte + block-diffusion training), or
    continue one with --init-from. Runs under `torchrun --nproc_per_node=N` (gloo) for data parallelism."""
    import dataclasses
    import os

    try:
        import torch

        from fastblt.graphs import BltConfig
        from fastblt.graphs.config import PRESETS as CONFIGS
        from fastblt.graphs.constants import DIFFUSION_VOCAB, MASK_ID, PAD_ID
        from fastblt.graphs.training.pipeline import train_bltd
        from fastblt.graphs.training.train import TrainConfig

        world = int(os.environ.get("WORLD_SIZE", "1"))
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))
        cfg = BltConfig.load(config_path) if config_path else CONFIGS[preset]()
        if cfg.mask_id is None:  # BLT-D needs MASK and PAD ids above the byte vocabulary
            cfg = dataclasses.replace(cfg, vocab_size=max(cfg.vocab_size, DIFFUSION_VOCAB), mask_id=MASK_ID,
                                      pad_id=PAD_ID)
        cfg = dataclasses.replace(cfg, max_patch_length=max_patch_length, block_sizes=_ints(block_sizes)).validate()
        common = dict(seq_len=seq_len, batch_size=batch_size, corpora=tuple(corpora) or ("stdlib",),
                      eval_every=eval_every, eval_windows=eval_windows,
                      ckpt_every=ckpt_every, seed=seed, device=device,
                      **_precision(precision, device))
        patcher_tc = TrainConfig(objective="patcher", steps=patcher_steps, lr=3e-3,
                                 warmup=min(100, patcher_steps // 10 + 1), **common).validate(cfg)
        warmup = min(100 if init_from else 300, steps // 10 + 1)  # a continuation needs only a short warmup
        main_tc = TrainConfig(objective="bltd", steps=steps, lr=lr, warmup=warmup,
                              block_sizes=_ints(block_sizes), block_probs=_floats(block_probs),
                              mask_weight=mask_weight, distill=distill, **common).validate(cfg)
        path = train_bltd(run_dir, cfg, patcher_tc, main_tc, target_patch_size, out, progress=not quiet, seed=seed,
                          init_from=init_from)
    except (ValueError, OSError) as exc:
        _fail(exc)
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"wrote {path}")


@main.command("train-decoder")
@click.argument("checkpoint", type=click.Path())
@click.option("--run-dir", required=True, type=click.Path())
@click.option("--out", type=click.Path(), help="Adapted model directory (default RUN_DIR/model).")
@click.option("--corpus", "corpora", multiple=True)
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--seq-len", type=int, default=512, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--block-sizes", default="4,8,16", show_default=True)
@click.option("--block-probs", default="0.4,0.4,0.2", show_default=True)
@click.option("--mask-weight", type=float, default=1.0, show_default=True, help="λ in L_clean + λ·L_mask.")
@click.option("--distill", type=float, default=0.0, show_default=True,
              help="Fraction of sequences whose block targets are the model's own greedy continuation.")
@click.option("--eval-every", type=int, default=500, show_default=True)
@click.option("--ckpt-every", type=int, default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="Autocast dtype; auto = bf16 where the CPU has native bf16 (AVX512-BF16/AMX), else fp32.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, or cuda[:N] (one GPU; with --precision auto it trains under bf16 autocast).")
@click.option("--quiet", is_flag=True)
def train_decoder(checkpoint, run_dir, out, corpora, steps, batch_size, seq_len, lr, block_sizes, block_probs,
                  mask_weight, distill, eval_every, ckpt_every, seed, precision, quiet, device):
    """Adapt an existing BLT (native or HF) to BLT-D: patcher, encoder and global stay frozen."""
    try:
        from fastblt.graphs.training.pipeline import adapt_decoder
        from fastblt.graphs.training.train import TrainConfig

        sizes = _ints(block_sizes)
        tc = TrainConfig(objective="decoder", steps=steps, lr=lr, warmup=min(200, steps // 10 + 1), seq_len=seq_len,
                         batch_size=batch_size, block_sizes=sizes, block_probs=_floats(block_probs),
                         mask_weight=mask_weight, distill=distill, corpora=tuple(corpora) or ("stdlib",),
                         eval_every=eval_every, ckpt_every=ckpt_every, seed=seed, device=device,
                         **_precision(precision, device))
        path = adapt_decoder(checkpoint, run_dir, tc, out, progress=not quiet)
    except (ValueError, OSError) as exc:
        _fail(exc)
    click.echo(f"wrote {path}")


def _precision(choice: str, device: str = "cpu") -> dict:
    """TrainConfig keyword for --precision (auto: bf16 on a GPU, else the config's CPU-dependent default)."""
    if choice == "auto":
        return {} if device.startswith("cpu") else {"bf16": True}
    return {"bf16": choice == "bf16"}


def _say(message: str) -> None:
    click.echo(message, err=True)


def _bars() -> bool:
    """Progress bars on a terminal; one line per stage in logs and pipes."""
    return sys.stderr.isatty()


def _model_or_default(checkpoint):
    from fastblt.graphs import default_model_path, load_model

    path = Path(checkpoint) if checkpoint else default_model_path()
    if not checkpoint and not (path / "config.json").is_file():
        raise click.ClickException(f"no checkpoint given and no default model bundled at {path}")
    return load_model(path)


TABLE_KEY = "encoder_hash_tok_embedding.weight"


def _build_inputs(checkpoint, hash_table: str, **options):
    """(model, BuildOptions) for a build. A hash table over the external-data threshold (BLT-1B: 12 GB in
    fp32) is not loaded into the model: the build streams it from the checkpoint into the bundle's table file."""
    import torch

    from fastblt.export.bundle import BuildOptions
    from fastblt.export.onnx_export import EXTERNAL_DATA_BYTES
    from fastblt.graphs import default_model_path, load_model
    from fastblt.graphs.checkpoint import checkpoint_tensor

    path = Path(checkpoint) if checkpoint else default_model_path()
    if not checkpoint and not (path / "config.json").is_file():
        raise click.ClickException(f"no checkpoint given and no default model bundled at {path}")
    table = checkpoint_tensor(path, TABLE_KEY)
    stored = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(table.dtype, "float32")
    big = table.shape[0] * table.shape[1] * 4 > options.get("external_bytes", EXTERNAL_DATA_BYTES)
    model = load_model(path, skip=(TABLE_KEY,) if big else ())
    source = (table.shape[0], lambda r0, r1: table.rows(r0, r1).float().numpy()) if big else None
    return model, BuildOptions(hash_table=hash_table, table_dtype=stored, table_source=source, release_model=True,
                               **options)


@main.command()
@click.argument("checkpoint", required=False, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Bundle directory (written atomically).")
@click.option("--precision", "precisions", default="fp32,int8", show_default=True,
              help="Comma-separated: fp32 (always), fp16, bf16 (GPUs, Jetson), int8, fp8 (Q/DQ, for TensorRT), "
                   "int8-dynamic, int4 (ORT CPU).")
@click.option("--block-sizes", default=None, help="decoder_block sizes to export (default: all trained).")
@click.option("--engines", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
              help="TensorRT engines: auto = when an NVIDIA GPU with TensorRT is present.")
@click.option("--fused/--no-fused", default=True, show_default=True,
              help="Also write the fused ONNX Runtime CPU layout (GroupQueryAttention, in-place caches) for fp32, "
                   "int8-dynamic and int4.")
@click.option("--hash-table", type=click.Choice(["auto", "float32", "bfloat16", "float16", "int8"]), default="auto",
              show_default=True, help="Storage of the bundle's hash n-gram table file (auto: the checkpoint's dtype; "
                                      "int8: one fp32 scale per row).")
@click.option("--external-data-mb", type=int, default=1024, show_default=True,
              help="Graphs with more weights than this keep them in external data (<graph>.onnx.data).")
@click.option("--heldout-windows", type=int, default=16, show_default=True,
              help="256-byte held-out windows each precision's bits/byte is measured on.")
@click.option("--calibration-prompts", type=int, default=4, show_default=True,
              help="Prompts generated in every mode to record each graph's real inputs.")
def build(checkpoint, out, precisions, block_sizes, engines, fused, hash_table, external_data_mb, heldout_windows,
          calibration_prompts):
    """Export CHECKPOINT (default: the bundled model) to a validated, quantized bundle."""
    try:
        from fastblt.export.bundle import build_bundle

        model, options = _build_inputs(checkpoint, hash_table, external_bytes=external_data_mb << 20,
                                       heldout_windows=heldout_windows, calibration_prompts=calibration_prompts)
        sizes = _ints(block_sizes) if block_sizes else None
        path = build_bundle(model, Path(out), tuple(p.strip() for p in precisions.split(",") if p.strip()), sizes,
                            engines, log=_say, fused=fused, bars=_bars(), options=options)
        del model
    except (ValueError, OSError, RuntimeError) as exc:
        _fail(exc)
    _print_bundle(path)


@main.command()
@click.argument("checkpoint", required=False, type=click.Path())
@click.option("--out", required=True, type=click.Path())
@click.option("--block-sizes", default=None)
@click.option("--fused/--no-fused", default=True, show_default=True, help="Also the fused ORT CPU layout.")
def onnx(checkpoint, out, block_sizes, fused):
    """Only the FP32 ONNX graphs (validated against torch), no quantization or engines."""
    try:
        from fastblt.export.bundle import build_bundle

        model, options = _build_inputs(checkpoint, "auto")
        sizes = _ints(block_sizes) if block_sizes else None
        path = build_bundle(model, Path(out), ("fp32",), sizes, "no", log=_say, fused=fused, bars=_bars(),
                            options=options)
    except (ValueError, OSError, RuntimeError) as exc:
        _fail(exc)
    _print_bundle(path)


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--precision", "precisions", default="int8", show_default=True,
              help="Comma-separated: fp16, bf16, int8, fp8, int8-dynamic, int4.")
@click.option("--heldout-windows", type=int, default=16, show_default=True,
              help="256-byte held-out windows each precision's bits/byte is measured on.")
@click.option("--calibration-prompts", type=int, default=4, show_default=True,
              help="Prompts generated in every mode to record real inputs (int8, fp8 and the bf16 check only).")
def quantize(bundle, precisions, heldout_windows, calibration_prompts):
    """Add precisions to an existing bundle: converted or quantized from its fp32 graphs (int8 and fp8 calibrated
    on real text), each measured on held-out text."""
    _bundle_stage("quantize_bundle", bundle, precisions, heldout_windows=heldout_windows,
                  calibration_prompts=calibration_prompts)


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--precision", "precisions", default="fp32", show_default=True)
def engine(bundle, precisions):
    """Build TensorRT engines for a bundle on this machine's GPU (run it on the target device)."""
    _bundle_stage("engine_bundle", bundle, precisions)


def _bundle_stage(function: str, bundle: str, precisions: str, **options) -> None:
    try:
        from fastblt.export import bundle as stages

        getattr(stages, function)(Path(bundle), tuple(p.strip() for p in precisions.split(",") if p.strip()),
                                  log=_say, bars=_bars(), **options)
    except (ValueError, OSError, RuntimeError) as exc:
        _fail(exc)
    _print_bundle(Path(bundle))


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--polygraphy", is_flag=True,
              help="Also compare every fp32 graph (and its TensorRT engine, on a GPU) with the torch reference on "
                   "real-text inputs through NVIDIA Polygraphy's Comparator.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="With --polygraphy: the checkpoint the bundle was built from (default: the bundled model).")
def check(bundle, polygraphy, checkpoint):
    """Verify every file of a bundle (sha256) and run each precision through ONNX Runtime."""
    try:
        import time

        from fastblt.graphs.precisions import PRECISIONS
        from fastblt.runtime.backends.ort import OrtBackend
        from fastblt.runtime.generator import Generator
        from fastblt.runtime.manifest import Manifest

        manifest = Manifest.load(bundle)
        t0 = time.perf_counter()
        hashed = manifest.verify_all()
        click.echo(f"sha256 of every listed file verified ({len(manifest.listed_files())} files, {hashed / 1e9:.2f} GB "
                   f"in {time.perf_counter() - t0:.1f} s)")
        for precision in manifest.precisions:
            if precision in PRECISIONS and not PRECISIONS[precision].cpu:
                click.echo(f"{precision}: files verified; not run (ONNX Runtime's CPU provider has no {precision} "
                           "kernels; run it on a GPU)")
                continue
            with Generator(OrtBackend(manifest, precision)) as gen:
                result = gen.generate("def main():", max_new_bytes=16)
            click.echo(f"{precision}: all graphs verified and loaded; greedy sample {result.text!r}")
        if polygraphy:
            from fastblt.export.polygraphy_check import polygraphy_check

            polygraphy_check(manifest.root, _model_or_default(checkpoint), log=click.echo)
            click.echo("polygraphy: every fp32 graph matches the torch reference on real-text inputs")
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        _fail(exc)


def _print_bundle(path: Path) -> None:
    from fastblt.runtime.manifest import Manifest

    m = Manifest.load(path)
    click.echo(f"bundle {path}: precisions {list(m.precisions)}, block sizes {list(m.block_sizes)}, "
               f"{len(m.graphs)} graphs, {len(m.engines)} engines")
    for name, q in m.quality.items():
        if q.get("heldout_bpb") is not None:
            agree = q.get("greedy_agreement_vs_fp32", {}).get("identical")
            extra = f", greedy identical to fp32 on {agree:.0%} of prompts" if agree is not None else ""
            click.echo(f"  {name:6s} held-out bits/byte {q['heldout_bpb']:.4f}{extra}")


@main.command("eval")
@click.argument("checkpoint", required=False, type=click.Path())
@click.option("--corpus", "corpora", multiple=True, help="'stdlib' (default) or a directory / .jsonl.")
@click.option("--seq-len", type=int, default=512, show_default=True)
@click.option("--max-windows", type=int, default=100000, show_default=True, help="Cap on evaluation windows.")
@click.option("--threads", type=int, default=None)
def eval_cmd(checkpoint, corpora, seq_len, max_windows, threads):
    """Held-out bits/byte (and BLT-D one-step masked accuracy) of CHECKPOINT (default: the bundled model)
    over every window of the held-out split."""
    try:
        import torch

        from fastblt.graphs.training.evaluate import evaluate

        if threads:
            torch.set_num_threads(threads)
        model = _model_or_default(checkpoint)
        result = evaluate(model, tuple(corpora) or ("stdlib",), seq_len, max_windows, per_doc=10**9)
    except (ValueError, OSError) as exc:
        _fail(exc)
    click.echo(json.dumps(result, indent=2))


@main.command("import-hf")
@click.argument("hf_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path())
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
def import_hf(hf_dir, out, dtype):
    """Convert an HF-format BLT directory (model_type "blt", safetensors) to a native checkpoint."""
    try:
        import torch

        from fastblt.graphs import load_model, save_model

        model = load_model(hf_dir)
        path = save_model(model, out, dtype=getattr(torch, dtype))
    except (ValueError, OSError) as exc:
        _fail(exc)
    click.echo(f"wrote {path} ({model.config.to_dict()['vocab_size']}-id vocabulary, "
               f"θ={model.config.patch_threshold:.4f})")


@main.command("export-hf")
@click.argument("checkpoint", required=False, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="HF BLT directory to write (atomically).")
@click.option("--keep-special-rows", is_flag=True,
              help="Keep the MASK/PAD rows (ids ≥ 260); stock HF then takes patcher entropies over them too.")
@click.option("--no-max-patch-length", is_flag=True,
              help="Write no max_patch_length, so HF's last-row logits (greedy decoding) equal fastblt's.")
def export_hf(checkpoint, out, keep_special_rows, no_max_patch_length):
    """Write CHECKPOINT (default: the bundled model) as an HF BLT directory for transformers.BltForCausalLM."""
    try:
        from fastblt.graphs.hf_export import save_hf

        path = save_hf(_model_or_default(checkpoint), out, drop_special_rows=not keep_special_rows,
                       max_patch_length=None if no_max_patch_length else "keep")
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        _fail(exc)
    click.echo(f"wrote {path}/config.json and {path}/model.safetensors (HF BLT, fp32): vocab_size "
               f"{config['vocab_size']}, max_patch_length {config['max_patch_length']}, "
               f"θ={config['patching_threshold']:.4f}")


@main.command()
@click.argument("checkpoint", required=False, type=click.Path())
@click.option("--preset", type=click.Choice(PRESETS + SHAPES), default=None,
              help="Describe a preset's shape instead of a checkpoint.")
@click.option("--json", "as_json", is_flag=True)
def inspect(checkpoint, preset, as_json):
    """Print a checkpoint's (or a bundle's, or a preset's) config, tensor shapes, parameter counts per component
    and size per precision, from config.json and the safetensors headers only: no weight is read, no torch needed."""
    if (checkpoint is None) == (preset is None):
        raise click.UsageError("give a CHECKPOINT directory or --preset NAME (one of them)")
    if checkpoint and (Path(checkpoint) / "manifest.json").is_file():
        try:
            report = _bundle_report(Path(checkpoint))
        except ValueError as exc:
            _fail(exc)
        if as_json:
            click.echo(json.dumps(report, indent=2))
            return
        _print_bundle(Path(checkpoint))
        click.echo(f"  params total {report['total_params']:,d} (hash tables {report['hash_table_params']:,d}); "
                   + ", ".join(f"{p} {_gib(b)}" for p, b in report["bytes"].items()) + " on disk")
        return
    try:
        report = _inspect_report(checkpoint, preset)
    except ValueError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from fastblt.graphs import BltConfig

    cfg = BltConfig.from_dict(report["config"])
    click.echo(f"{checkpoint or 'preset ' + preset} ({report['kind']}{' checkpoint' if checkpoint else ''})")
    for name in ("patcher", "encoder", "global_transformer", "decoder"):
        c = getattr(cfg, name)
        click.echo(f"  {name:18s} dim {c.dim:5d}  layers {c.n_layers:2d}  heads {c.n_heads:2d}/{c.kv_heads:<2d} "
                   f"ffn {c.hidden:5d}  θ {c.rope_theta:g}  window {c.window}")
    click.echo(f"  patching           θ={cfg.patch_threshold:.4f} nats, max patch length {cfg.max_patch_length}, "
               f"k={cfg.cross_attn_k}")
    click.echo(f"  diffusion          block sizes {list(cfg.block_sizes) or 'none (AR/BLT-S only)'}")
    rows, dim = report["hash_table_shape"]
    click.echo(f"  hash tables        {cfg.n_hash_tables} × {cfg.hash_vocab:,} rows = [{rows:,}, {dim}]")
    for name, n in report["params"].items():
        click.echo(f"  params {name:16s} {n:>14,d}")
    click.echo(f"  params {'total':16s} {report['total_params']:>14,d}  (from {report['params_from']})")
    click.echo(f"  {'bytes':18s} {'whole model':>12s} {'hash tables':>12s} {'rest':>12s}")
    for precision, b in report["bytes"].items():
        click.echo(f"  {precision:18s} {_gib(b['total']):>12s} {_gib(b['hash_tables']):>12s} {_gib(b['rest']):>12s}")
    weights = report.get("weights")
    if weights:
        dtypes = ", ".join(f"{k} {v:,}" for k, v in weights["params_by_dtype"].items())
        click.echo(f"  stored             {len(weights['files'])} file(s), {_gib(weights['bytes'])}, "
                   f"{weights['tensors']} tensors ({dtypes} parameters)")


def _bundle_report(path: Path) -> dict:
    """What `inspect BUNDLE --json` prints: the manifest's config, parameter counts (from the config), precisions,
    graphs, engines, quality, and the bytes each precision's files take on disk (each file counted once)."""
    from fastblt.graphs.params import param_counts
    from fastblt.runtime.manifest import Manifest

    m = Manifest.load(path)
    counts = param_counts(m.config)
    on_disk: dict[str, dict[str, int]] = {p: {} for p in m.precisions}
    for entry in m.graphs.values():
        for precision, gfile in entry.files.items():
            for f in gfile.all_files:
                on_disk.setdefault(precision, {})[f.path] = max(f.bytes, 0)
    if m.hash_table is not None:
        on_disk["hash_table"] = {f.path: f.bytes for f in m.hash_table.files}
    total = sum(counts.values())
    return {
        "kind": "bundle", "path": str(path), "created": m.created, "config": m.model,
        "params": counts, "params_from": "config", "total_params": total,
        "hash_table_params": counts.get("hash_embeddings", 0), "precisions": list(m.precisions),
        "block_sizes": list(m.block_sizes), "graphs": sorted(m.graphs), "engines": len(m.engines),
        "bytes": {p: sum(files.values()) for p, files in on_disk.items()},
        "quality": m.quality, "tools": m.tools,
    }


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 28 else f"{n / (1 << 20):.2f} MiB"


# tensor-name prefix → the component params.param_counts counts it in
COMPONENTS = {"patcher": "patcher", "local_encoder": "encoder", "encoder_hash_tok_embedding": "hash_embeddings",
              "global_transformer": "global", "local_decoder": "decoder", "lm_head": "decoder"}
PRECISION_BYTES = {"fp32": 4.0, "bf16/fp16": 2.0, "int8": 1.0, "int4": 0.5}  # weights only, no scales


def _inspect_report(checkpoint: str | None, preset: str | None) -> dict:
    """Everything `inspect` prints, as JSON-able data; reads config.json and safetensors headers, no weights."""
    import math

    from fastblt.graphs import read_config
    from fastblt.graphs.checkpoint import DTYPE_BYTES, WEIGHTS_FILE, CheckpointError, checkpoint_index
    from fastblt.graphs.config import PRESETS as CONFIGS
    from fastblt.graphs.params import param_counts

    weights = None
    if preset is not None:
        if preset in SHAPES:
            from fastblt.graphs.presets import preset_config

            cfg, kind = preset_config(preset), "hf preset"
        else:
            cfg, kind = CONFIGS[preset](), "native preset"
    else:
        cfg, kind = read_config(Path(checkpoint))
        try:
            index = checkpoint_index(checkpoint)
        except CheckpointError as exc:
            if f"missing {WEIGHTS_FILE}" not in str(exc):
                raise
            index = None  # a config-only directory: sizes come from the config
        if index is not None:
            counts = dict.fromkeys(param_counts(cfg), 0)
            by_dtype: dict[str, int] = {}
            for name, (_, dtype, shape) in index.items():
                n = math.prod(shape)
                part = COMPONENTS.get(name.split(".")[0], "other")
                counts[part] = counts.get(part, 0) + n
                by_dtype[dtype] = by_dtype.get(dtype, 0) + n
            weights = {
                "files": sorted({Path(f).name for f, _, _ in index.values()}),
                "tensors": len(index),
                "bytes": sum(math.prod(s) * DTYPE_BYTES[d] for _, d, s in index.values()),
                "params_by_dtype": by_dtype,
                "shapes": {name: list(shape) for name, (_, _, shape) in index.items()},
                "dtypes": {name: dtype for name, (_, dtype, _) in index.items()},
            }
    if weights is None:
        counts = param_counts(cfg)
    total = sum(counts.values())
    hashed = counts.get("hash_embeddings", 0)
    return {
        "kind": kind,
        "config": cfg.to_dict(),
        "params": counts,
        "params_from": "safetensors headers" if weights else "config",
        "total_params": total,
        "hash_table_params": hashed,
        "other_params": total - hashed,
        "hash_table_shape": [cfg.n_hash_tables * cfg.hash_vocab, cfg.encoder.dim],
        "bytes": {p: {"total": math.ceil(total * b), "hash_tables": math.ceil(hashed * b),
                      "rest": math.ceil((total - hashed) * b)} for p, b in PRECISION_BYTES.items()},
        "weights": weights,
    }


if __name__ == "__main__":
    sys.exit(main())
