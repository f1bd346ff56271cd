"""`blt-run`: the run side — generate text from a checkpoint or bundle."""

from __future__ import annotations

import json
import sys

import click

from fastblt.runtime.backends import BACKENDS
from fastblt.runtime.modes import MODES
from fastblt.runtime.session import BLOCK_STARTS
from fastblt.runtime.unmask import EB_VARIANTS, ORDERS, UnmaskConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run a Byte Latent Transformer."""


@main.command()
@click.argument("prompt", default="")
@click.option("--checkpoint", type=click.Path(), help="Checkpoint directory (native or HF BLT).")
@click.option("--bundle", type=click.Path(), help="Bundle directory from `blt-export build` (ort/trt backends).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="Default: ort with --bundle, else torch.")
@click.option("--precision", default="fp32", show_default=True, help="Bundle precision (ort/trt).")
@click.option("--mode", type=click.Choice(MODES), default="ar", show_default=True)
@click.option("--max-new-bytes", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--block-size", type=int, default=8, show_default=True, help="BLT-D/BLT-DV block size B.")
@click.option("--draft-k", type=int, default=4, show_default=True, help="BLT-S draft window k.")
@click.option("--block-start", type=click.Choice(BLOCK_STARTS), default=None,
              help="BLT-D/BLT-DV blocks start at the open patch's start (as trained; the default) or after the "
                   "sequence with the open patch closed by force (the paper's).")
@click.option("--alpha", type=float, default=None, help="Unmask by confidence > ALPHA (BLT-D default 0.7).")
@click.option("--gamma", type=float, default=None, help="Unmask by entropy bound GAMMA (nats).")
@click.option("--one-step", is_flag=True, help="Unmask the whole block in one step (BLT-DV default).")
@click.option("--eb-variant", type=click.Choice(EB_VARIANTS), default="paper", show_default=True,
              help="paper: ΣH ≤ γ; eb_sampler: ΣH − max H ≤ γ.")
@click.option("--order", type=click.Choice(ORDERS), default="any", show_default=True,
              help="left_to_right keeps sampled multi-step BLT-DV exactly lossless.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
def generate(prompt, checkpoint, bundle, backend, precision, mode, max_new_bytes, temperature, top_k, top_p, seed,
             stop, block_size, draft_k, block_start, alpha, gamma, one_step, eb_variant, order, as_json):
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
        if checkpoint and bundle:
            raise ValueError("pass either --checkpoint (torch) or --bundle (ort/trt), not both")
        backend = backend or ("ort" if bundle else "torch")
        with rt.load(bundle or checkpoint, backend=backend,
                     **({"precision": precision} if backend != "torch" else {})) as gen:
            options = dict(mode=mode, max_new_bytes=max_new_bytes, temperature=temperature, top_k=top_k,
                           top_p=top_p, seed=seed, stop=list(stop), block_size=block_size, draft_k=draft_k,
                           unmask=unmask, block_start=block_start)
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


MODE_SETTINGS = [
    ("ar", "AR", {}),
    ("blts", "BLT-S k=8", {"draft_k": 8}),
    ("blts", "BLT-S k=16", {"draft_k": 16}),  # the paper's best quality/bandwidth trade-off
    ("bltd", "BLT-D B=8 α=0.7", {"block_size": 8, "unmask": UnmaskConfig("confidence", alpha=0.7)}),
    ("bltdv", "BLT-DV B=8 one-step", {"block_size": 8, "unmask": UnmaskConfig("one_step")}),
]


@main.command()
@click.argument("prompt", default="class Stack:\n    def __init__(self")
@click.option("--checkpoint", type=click.Path(), help="Checkpoint directory (torch backend).")
@click.option("--bundle", type=click.Path(), help="Bundle directory from `blt-export build` (ort/trt backends).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="Default: ort with --bundle, else torch.")
@click.option("--precision", default="fp32", show_default=True, help="Bundle precision (ort/trt).")
@click.option("--max-new-bytes", type=int, default=128, show_default=True)
def compare(prompt, checkpoint, bundle, backend, precision, max_new_bytes):
    """Greedy generation in every decoding mode, one table: speed, the paper's counters, a preview."""
    import fastblt.runtime as rt

    try:
        backend = backend or ("ort" if bundle else "torch")
        options = {"precision": precision} if backend != "torch" else {}
        rows = []
        with rt.load(bundle or checkpoint, backend=backend, **options) as gen:
            for mode, label, kw in MODE_SETTINGS:
                if mode in ("bltd", "bltdv") and not gen.config.diffusion_trained:
                    continue
                r = gen.generate(prompt, mode=mode, max_new_bytes=max_new_bytes, **kw)
                rows.append((label, r))
            layout = getattr(gen.backend, "layout", None)  # ORT: fused CPU graphs or the standard ones
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backend {backend}{' ' + precision if backend != 'torch' else ''}"
               f"{f' ({layout} graphs)' if layout else ''}, prompt {prompt!r}, {max_new_bytes} new bytes, greedy\n")
    click.echo("| mode | bytes/s | N_enc | N_dec | bandwidth GB | acceptance | output preview |")
    click.echo("|---|---|---|---|---|---|---|")
    for label, r in rows:
        c = r.counters
        acc = f"{c['acceptance']:.2f}" if "acceptance" in c else "–"
        preview = r.text[:48].replace("\n", "⏎").replace("|", "¦")
        click.echo(f"| {label} | {r.bytes_per_s:.1f} | {c['n_enc']} | {c['n_dec']} | {c['bandwidth_gb']:.4f} | "
                   f"{acc} | `{preview}` |")


@main.command()
@click.option("--checkpoint", type=click.Path(), help="Checkpoint directory (torch backend).")
@click.option("--bundle", type=click.Path(), help="Bundle directory from `blt-export build` (ort/trt backends).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="Default: ort with --bundle, else torch.")
@click.option("--precision", default="fp32", show_default=True, help="Bundle precision (ort/trt).")
@click.option("--threads", type=int, default=None, help="Backend threads per graph call (default: the backend's).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Requests generating at once.")
@click.option("--max-queue", type=int, default=16, show_default=True, help="Requests waiting beyond that get 429.")
@click.option("--max-new-bytes-cap", type=int, default=4096, show_default=True, help="Largest max_tokens (bytes).")
@click.option("--model-name", default=None, help="Model id clients send (default: the bundle/checkpoint folder name).")
def serve(checkpoint, bundle, backend, precision, threads, host, port, workers, max_queue, max_new_bytes_cap,
          model_name):
    """OpenAI-compatible completions server (/v1/completions, /v1/models, /health, /metrics)."""
    try:
        from fastblt.runtime.serve import server

        server.serve(server.ModelSource(bundle, checkpoint, backend, precision, threads), host, port, workers,
                     max_queue, max_new_bytes_cap, model_name)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
