"""fastblt.demo — the Gradio app (`blt-demo`): races the decoding modes over fastblt.runtime's public API.

`race` and `render` need no gradio; `app` builds and launches the Blocks app (pip install 'fastblt[demo]').
"""
