"""`blt-run`: the run side — generate text from a checkpoint or bundle."""

from __future__ import annotations

import json
import sys

import click

from fastblt.runtime.backends import BACKENDS
from fastblt.runtime.modes import MODES
from fastblt.runtime.unmask import EB_VARIANTS, ORDERS, UnmaskConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run a Byte Latent Transformer."""


@main.command()
@click.argument("prompt", default="")
@click.option("--checkpoint", type=click.Path(), help="Checkpoint directory (native or HF BLT).")
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True)
@click.option("--mode", type=click.Choice(MODES), default="ar", show_default=True)
@click.option("--max-new-bytes", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--block-size", type=int, default=8, show_default=True, help="BLT-D/BLT-DV block size B.")
@click.option("--draft-k", type=int, default=4, show_default=True, help="BLT-S draft window k.")
@click.option("--alpha", type=float, default=None, help="Unmask by confidence > ALPHA (BLT-D default 0.7).")
@click.option("--gamma", type=float, default=None, help="Unmask by entropy bound GAMMA (nats).")
@click.option("--one-step", is_flag=True, help="Unmask the whole block in one step (BLT-DV default).")
@click.option("--eb-variant", type=click.Choice(EB_VARIANTS), default="paper", show_default=True,
              help="paper: ΣH ≤ γ; eb_sampler: ΣH − max H ≤ γ.")
@click.option("--order", type=click.Choice(ORDERS), default="any", show_default=True,
              help="left_to_right keeps sampled multi-step BLT-DV exactly lossless.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
def generate(prompt, checkpoint, backend, mode, max_new_bytes, temperature, top_k, top_p, seed, stop, block_size,
             draft_k, alpha, gamma, one_step, eb_variant, order, as_json):
    """Generate a continuation of PROMPT (empty: start from BOS)."""
    import fastblt.runtime as rt

    try:
        if sum(x is not None and x is not False for x in (alpha, gamma, one_step or None)) > 1:
            raise ValueError("choose one unmasking rule: --alpha, --gamma or --one-step")
        if one_step:
            unmask = UnmaskConfig("one_step", eb_variant=eb_variant, order=order)
        elif gamma is not None:
            unmask = UnmaskConfig("entropy", gamma=gamma, eb_variant=eb_variant, order=order)
        elif alpha is not None:
            unmask = UnmaskConfig("confidence", alpha=alpha, order=order)
        else:
            unmask = UnmaskConfig("one_step" if mode == "bltdv" else "confidence", order=order)
        gen = rt.load(checkpoint, backend=backend)
        options = dict(mode=mode, max_new_bytes=max_new_bytes, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed, stop=list(stop), block_size=block_size, draft_k=draft_k,
                       unmask=unmask)
        if as_json:
            result = gen.generate(prompt, **options)
            click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
            return
        events = gen.stream(prompt, **options)  # validates the options before anything is printed
        click.echo(prompt, nl=False)
        for event in events:
            if event["type"] == "text":
                click.echo(event["text"], nl=False)
            elif event["type"] == "done":
                r = event["result"]
        click.echo()
        c = r.counters
        click.echo(f"[{r.mode}] {len(r.bytes)} bytes, {r.bytes_per_s:.1f} B/s, N_enc {c['n_enc']}, "
                   f"N_dec {c['n_dec']}, bandwidth {c['bandwidth_gb']:.4f} GB, stop={r.stop_reason}", err=True)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
