"""fastblt.runtime.serve — the OpenAI-compatible completions server (`blt-run serve`) and its Ray Serve deployment.

FastAPI, uvicorn, prometheus-client and Ray are imported only by the modules that need them (`app`, `ray_app`),
so `import fastblt.runtime` stays light; install them with `pip install 'fastblt[serve]'` (and `'fastblt[ray]'`).
"""

from __future__ import annotations

SERVE_HINT = "the server needs FastAPI, uvicorn and prometheus-client: pip install 'fastblt[serve]'"
RAY_HINT = "the Ray Serve deployment needs Ray Serve: pip install 'fastblt[ray]'"
