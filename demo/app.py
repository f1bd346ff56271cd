"""The Gradio app: the race of the four decoding modes over one loaded Generator, the patcher's view, the
diffusion replay, and a plain `generate` API endpoint that returns what `blt-run generate` prints.

One Generator serves every visitor; Gradio's queue bounds how many requests run at once (`concurrency`),
and the server caps max new bytes (`cap`), whatever a client sends.
"""

from __future__ import annotations

import logging
import threading
import time

import fastblt.runtime as rt
from fastblt.demo import render
from fastblt.demo.race import LABELS, RULES, SCHEDULES, BadInput, Request, check_request, patcher_view, race

try:
    import gradio as gr
except ImportError:  # pragma: no cover - exercised only without gradio
    raise ImportError("the demo needs gradio: pip install 'fastblt[demo]'") from None

log = logging.getLogger("fastblt.demo")
EXAMPLES = ["def fibonacci(n):\n", "class Stack:\n    def __init__(self", "import os\nimport sys\n\n\ndef main(",
            "def read_json(path):\n    with open(path) as f:\n"]
REFRESH_S = 0.12  # at most ~8 panel updates per second reach the browser
MODES = tuple(LABELS)


def _message(e: Exception) -> str:
    return str(e) if isinstance(e, ValueError) else f"generation failed: {type(e).__name__}: {e}"


def build(gen: rt.Generator, cap: int = 1024, concurrency: int = 4, about: str = "") -> gr.Blocks:
    """The Blocks app over `gen` (launch it with `launch`)."""
    cfg = gen.config
    sizes = list(cfg.block_sizes or ())
    modes = [m for m in MODES if cfg.diffusion_trained or m in ("ar", "blts")]

    def run_race(prompt, ticked, max_new_bytes, block_size, draft_k, rule, alpha, gamma, temperature, top_p, seed,
                 stop, schedule):
        seed = None if seed is None or seed == "" else int(seed)
        req = Request(prompt, tuple(m for m in MODES if m in (ticked or [])), _as_int(max_new_bytes),
                      _as_int(block_size), _as_int(draft_k), rule, alpha, gamma, temperature, top_p, seed, stop or "",
                      schedule)
        try:
            check_request(gen, req, cap)
        except BadInput as e:
            raise gr.Error(str(e), print_exception=False) from None
        flag, last, tracks = threading.Event(), 0.0, {}
        try:
            for tracks in race(gen, req, cap, flag):
                now = time.perf_counter()
                if now - last >= REFRESH_S or all(t.done for t in tracks.values()):
                    last = now
                    yield (*_panels(tracks, prompt), *[gr.skip()] * 8)
        except ValueError as e:
            raise gr.Error(_message(e), print_exception=False) from None
        finally:
            flag.set()
        done = {m: t for m, t in tracks.items() if t.result is not None}
        first = next(iter(done), None)
        replayable = [m for m in ("bltd", "bltdv") if m in done and done[m].blocks]
        store = {"prompt": prompt.encode("utf-8"), "tracks": tracks}
        yield (*_panels(tracks, prompt), render.summary(tracks, schedule),
               gr.Radio(choices=[(LABELS[m], m) for m in done], value=first),
               _patcher(store, first), *_replay_controls(store, replayable[0] if replayable else None, 1, 0),
               store)

    def _patcher(store, mode) -> str:
        if not store or mode not in store["tracks"]:
            return "<div>Run a race to see how the patcher cut its output.</div>"
        data = store["prompt"] + bytes(store["tracks"][mode].data)
        try:
            return render.entropy_plot(patcher_view(gen, data), len(store["prompt"]))
        except ValueError as e:
            return f'<div class="blt-error">{render.html.escape(str(e))}</div>'

    def _replay_controls(store, mode, block_no, step):
        track = store["tracks"].get(mode) if store and mode else None
        blocks = track.blocks if track else []
        block_no = min(max(_as_int(block_no) or 1, 1), max(len(blocks), 1))
        block = blocks[block_no - 1] if blocks else None
        last = (len(block.steps) + (block.accepted is not None)) if block else 0
        step = min(max(_as_int(step) or 0, 0), last)
        choices = [(LABELS[m], m) for m in ("bltd", "bltdv") if store and m in store["tracks"]
                   and store["tracks"][m].blocks]
        return (gr.Radio(choices=choices, value=mode if block else None),
                gr.Slider(minimum=1, maximum=max(len(blocks), 2), value=block_no, step=1,  # min < max
                          label=f"block (of {len(blocks)})"),
                gr.Slider(minimum=0, maximum=max(last, 1), value=step, step=1,
                          label=f"diffusion step (of {last}{', last: verification' if mode == 'bltdv' else ''})"),
                render.replay(block, step, mode or ""))

    def generate(prompt: str, mode: str, max_new_bytes: int) -> str:
        """Greedy generation with blt-run's defaults (block size 8, draft k 4, BLT-D α = 0.7, BLT-DV one-step);
        returns the generated text, exactly what `blt-run generate` prints after the prompt."""
        try:
            req = Request(prompt, (mode,), _as_int(max_new_bytes))
            options = check_request(gen, req, cap)[mode]
            return gen.generate(prompt, **options).text
        except ValueError as e:
            raise gr.Error(_message(e), print_exception=False) from None

    with gr.Blocks(title="Fast BLT: race the decoding modes", analytics_enabled=False, fill_width=True) as app:
        gr.Markdown("## Fast BLT — race the decoding modes\nOne prompt, up to four ways to decode it with the same "
                    "model: plain autoregressive (AR), block diffusion (BLT-D), self-speculation (BLT-S) and "
                    f"diffusion drafts with verification (BLT-DV). {about}")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=4, value=EXAMPLES[1], elem_id="prompt")
                gr.Examples([[e] for e in EXAMPLES], inputs=[prompt], label="Code prompts")
            with gr.Column(scale=2):
                ticked = gr.CheckboxGroup([(LABELS[m], m) for m in modes], value=list(modes), label="Modes",
                                          elem_id="modes")
                max_new = gr.Slider(1, cap, value=min(256, cap), step=1, label=f"Max new bytes (≤ {cap})",
                                    elem_id="max-new-bytes")
                schedule = gr.Radio(list(SCHEDULES), value=SCHEDULES[0], label="Run the modes",
                                    info="one after another gives each mode the whole CPU: cleaner timings")
                run = gr.Button("Run the race", variant="primary", elem_id="run")
        with gr.Accordion("Decoding settings", open=False):
            with gr.Row():
                block_size = gr.Dropdown(sizes or [8], value=8 if 8 in sizes or not sizes else sizes[0],
                                         label="Block size B (BLT-D, BLT-DV)", allow_custom_value=True)
                draft_k = gr.Slider(1, 64, value=4, step=1, label="Draft k (BLT-S)")
                rule = gr.Radio(list(RULES), value="mode default", label="Unmasking rule (BLT-D, BLT-DV)",
                                info="mode default: BLT-D confidence α = 0.7, BLT-DV one-step (as blt-run)")
                alpha = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="α (confidence)")
                gamma = gr.Slider(0.1, 8.0, value=1.0, step=0.1, label="γ (entropy budget, nats)")
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
                seed = gr.Number(value=0, precision=0, label="Seed")
                stop = gr.Textbox(value="", label="Stop string", max_lines=1)
        gr.HTML(render.legend(4), elem_id="legend")
        with gr.Row(equal_height=False):
            panels = [gr.HTML(render.panel(m, None, "", "idle" if m in modes else "idle"), elem_id=f"out-{m}",
                              min_width=260) for m in MODES]
        table = gr.HTML("", elem_id="summary")
        store = gr.State(None)
        with gr.Tab("Patcher: entropy and patches"):
            patch_mode = gr.Radio([], label="Output of", elem_id="patcher-mode")
            patch_plot = gr.HTML("<div>Run a race to see how the patcher cut its output.</div>", elem_id="patcher")
        with gr.Tab("Diffusion replay"):
            replay_mode = gr.Radio([], label="Mode", elem_id="replay-mode")
            with gr.Row():
                replay_block = gr.Slider(1, 2, value=1, step=1, label="block", elem_id="replay-block")
                replay_step = gr.Slider(0, 1, value=0, step=1, label="diffusion step", elem_id="replay-step")
            replay_view = gr.HTML(render.replay(None, 0, ""), elem_id="replay")

        inputs = [prompt, ticked, max_new, block_size, draft_k, rule, alpha, gamma, temperature, top_p, seed, stop,
                  schedule]
        outputs = [*panels, table, patch_mode, patch_plot, replay_mode, replay_block, replay_step, replay_view, store]
        run.click(run_race, inputs, outputs, api_name="race", concurrency_limit=concurrency,
                  concurrency_id="model", show_progress="minimal")
        patch_mode.change(_patcher, [store, patch_mode], patch_plot, api_visibility="private",
                          concurrency_limit=concurrency, concurrency_id="model")
        controls = [replay_mode, replay_block, replay_step, replay_view]
        replay_mode.input(lambda s, m: _replay_controls(s, m, 1, 0), [store, replay_mode], controls,
                          api_visibility="private", queue=False)
        replay_block.input(lambda s, m, b: _replay_controls(s, m, b, 0), [store, replay_mode, replay_block],
                           controls, api_visibility="private", queue=False)
        replay_step.input(_replay_controls, [store, replay_mode, replay_block, replay_step], controls,
                          api_visibility="private", queue=False)
        gr.api(generate, api_name="generate", concurrency_limit=concurrency, concurrency_id="model")
    app.queue(default_concurrency_limit=concurrency, max_size=64)
    return app


def describe(gen: rt.Generator, source: str, backend: str, precision: str = "fp32") -> str:
    """One line on what is served: model source, backend, precision, graph layout."""
    layout = getattr(gen.backend, "layout", None)
    return (f"Model: {source} on {backend}{' ' + precision if backend != 'torch' else ''}"
            f"{f' ({layout} graphs)' if layout else ''}.")


def _as_int(x):
    """Sliders and numbers arrive as floats from some clients; a whole float is taken as its integer."""
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        return int(x)
    return x


def _panels(tracks: dict, prompt: str) -> list[str]:
    return [render.panel(m, tracks.get(m), prompt, None if m in tracks else "idle") for m in MODES]


def theme():
    font = ["ui-sans-serif", "system-ui", "sans-serif"]  # local fonts: no web-font download
    return gr.themes.Default(font=font, font_mono=["ui-monospace", "monospace"])


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True):
    """Serve `app` (with the demo's CSS and theme); with block=False returns once the server is up."""
    return app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                      theme=theme(), css=render.CSS, ssr_mode=False, quiet=not block, footer_links=["api"],
                      show_error=False)
