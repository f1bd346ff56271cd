"""`blt-demo`: serve the race of the decoding modes in a browser (Gradio)."""

from __future__ import annotations

import click

from fastblt.runtime.backends import BACKENDS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", type=click.Path(), help="Bundle directory from `blt-export build` (ort/trt backends).")
@click.option("--checkpoint", type=click.Path(), help="Checkpoint directory (torch backend).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Default: ort with --bundle, else torch (the bundled default model without either).")
@click.option("--precision", default="fp32", show_default=True, help="Bundle precision (ort/trt).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: every one).")
@click.option("--port", type=int, default=7860, show_default=True)
@click.option("--max-new-bytes-cap", "cap", type=click.IntRange(1, 1 << 20), default=1024, show_default=True,
              help="The most bytes one request may generate, whatever a client asks for.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Requests generating at once (the rest wait in Gradio's queue).")
@click.option("--share", is_flag=True, help="Also open a public Gradio share link (off by default).")
def main(bundle, checkpoint, backend, precision, host, port, cap, concurrency, share):
    """Race AR, BLT-D, BLT-S and BLT-DV on one prompt, live, with each byte's origin."""
    import fastblt.runtime as rt

    try:
        if checkpoint and bundle:
            raise ValueError("pass either --checkpoint (torch) or --bundle (ort/trt), not both")
        backend = backend or ("ort" if bundle else "torch")
        gen = rt.load(bundle or checkpoint, backend=backend, **({"precision": precision} if backend != "torch" else {}))
        from fastblt.demo.app import build, describe, launch
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
    about = describe(gen, bundle or checkpoint or "the bundled default model", backend, precision)
    click.echo(f"blt-demo: {about} Serving on http://{host}:{port} (Ctrl+C stops)", err=True)
    with gen:  # closes the backend's sessions when the server stops
        launch(build(gen, cap, concurrency, about), host, port, share=share)
