"""`blt-export`: the build side — create, import and inspect checkpoints (later: train, build bundles)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

PRESETS = ("tiny",)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Turn BLT checkpoints into deployable bundles."""


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--out", required=True, type=click.Path(), help="Directory to write (config.json + model.safetensors).")
@click.option("--preset", type=click.Choice(PRESETS), default="tiny", show_default=True)
@click.option("--config", "config_path", type=click.Path(), help="A fastblt config.json instead of a preset.")
@click.option("--seed", type=int, default=0, show_default=True)
def init(out, preset, config_path, seed):
    """Write a randomly initialised model (the starting point for training, and for smoke tests)."""
    try:
        import torch
        from fastblt.graphs import BltConfig, save_model, tiny_config
        from fastblt.graphs.model import BltModel

        cfg = BltConfig.load(config_path) if config_path else tiny_config()
        torch.manual_seed(seed)
        path = save_model(BltModel(cfg), out)
    except (ValueError, OSError) as exc:
        _fail(exc)
    click.echo(f"wrote {path}")


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


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def inspect(checkpoint, as_json):
    """Print a checkpoint's config and parameter counts per component (no torch needed)."""
    from fastblt.graphs import read_config
    from fastblt.graphs.params import param_counts

    try:
        cfg, kind = read_config(Path(checkpoint))
    except ValueError as exc:
        _fail(exc)
    counts = param_counts(cfg)
    if as_json:
        click.echo(json.dumps({"kind": kind, "config": cfg.to_dict(), "params": counts}, indent=2))
        return
    click.echo(f"{checkpoint} ({kind} checkpoint)")
    for name in ("patcher", "encoder", "global_transformer", "decoder"):
        c = getattr(cfg, name)
        click.echo(f"  {name:18s} dim {c.dim:5d}  layers {c.n_layers:2d}  heads {c.n_heads:2d}/{c.kv_heads:<2d} "
                   f"ffn {c.hidden:5d}  θ {c.rope_theta:g}  window {c.window}")
    click.echo(f"  patching           θ={cfg.patch_threshold:.4f} nats, max patch length {cfg.max_patch_length}, "
               f"k={cfg.cross_attn_k}")
    click.echo(f"  diffusion          block sizes {list(cfg.block_sizes) or 'none (AR/BLT-S only)'}")
    for name, n in counts.items():
        click.echo(f"  params {name:16s} {n:>14,d}")


if __name__ == "__main__":
    sys.exit(main())
