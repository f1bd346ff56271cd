"""Load one model and serve it with uvicorn (`blt-run serve`); also what each Ray Serve replica loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSource:
    """What to load, as `blt-run generate` takes it: a bundle (ort/trt), a checkpoint (torch) or neither
    (the bundled default model)."""
    bundle: str | None = None
    checkpoint: str | None = None
    backend: str | None = None
    precision: str = "fp32"
    threads: int | None = None

    @property
    def model_id(self) -> str:
        path = self.bundle or self.checkpoint
        return Path(path).resolve().name if path else "fastblt-default"

    def load(self):
        import fastblt.runtime as rt

        if self.bundle and self.checkpoint:
            raise ValueError("pass either --checkpoint (torch) or --bundle (ort/trt), not both")
        backend = self.backend or ("ort" if self.bundle else "torch")
        options = {} if backend == "torch" else {"precision": self.precision}
        if self.threads:
            options["threads"] = self.threads
        return rt.load(self.bundle or self.checkpoint, backend=backend, **options)


def serve(source: ModelSource, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, max_queue: int = 16,
          max_new_bytes_cap: int = 4096, model: str | None = None, log_level: str = "info") -> None:
    """Load once, then answer HTTP until interrupted."""
    from fastblt.runtime.serve import SERVE_HINT
    from fastblt.runtime.serve.app import ServeConfig, create_app

    try:
        import uvicorn
    except ImportError:
        raise ImportError(SERVE_HINT) from None
    config = ServeConfig(model or source.model_id, workers, max_queue, max_new_bytes_cap)
    app = create_app(source.load(), config)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
