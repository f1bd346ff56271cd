"""fastblt.demo — reserved for the Gradio app over fastblt.runtime's public API (not built yet)."""
