"""`blt-run`: the run side — generate text from a checkpoint or bundle."""

from __future__ import annotations

import json
import sys

import click
from fastblt.runtime.backends import BACKENDS
from fastblt.runtime.modes import MODES


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
def generate(prompt, checkpoint, backend, mode, max_new_bytes, temperature, top_k, top_p, seed, stop, as_json):
    """Generate a continuation of PROMPT (empty: start from BOS)."""
    import fastblt.runtime as rt

    try:
        gen = rt.load(checkpoint, backend=backend)
        options = dict(mode=mode, max_new_bytes=max_new_bytes, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed, stop=list(stop))
        if as_json:
            result = gen.generate(prompt, **options)
            click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
            return
        click.echo(prompt, nl=False)
        for event in gen.stream(prompt, **options):
            if event["type"] == "text":
                click.echo(event["text"], nl=False)
            elif event["type"] == "done":
                r = event["result"]
        click.echo()
        click.echo(f"[{r.mode}] {len(r.bytes)} bytes in {r.seconds:.2f} s ({r.bytes_per_s:.1f} B/s), "
                   f"stop={r.stop_reason}, graph calls {r.counters['graph_calls']}", err=True)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
