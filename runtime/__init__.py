"""fastblt.runtime — runs a BLT: scheduler (Session), decoding modes, sampling, backends. Imports no torch.

    gen = fastblt.runtime.load()                      # bundled default model, torch reference backend
    print(gen.generate("def f(x):", mode="ar", max_new_bytes=64).text)
"""

from __future__ import annotations

from pathlib import Path

from fastblt.runtime.generator import Generator, Result
from fastblt.runtime.modes import MODES
from fastblt.runtime.sampling import SamplingConfig
from fastblt.runtime.session import SequenceTooLongError, Session

__all__ = ["load", "Generator", "Result", "Session", "SamplingConfig", "SequenceTooLongError", "MODES"]


def load(source: str | Path | None = None, backend: str = "torch", **options) -> Generator:
    """A Generator over `source`: a checkpoint directory (torch backend) or a bundle from `blt-export build`
    (ort, trt; options: precision, device, threads). Default source: the bundled model (torch only)."""
    from fastblt.runtime.backends import load_backend

    if source is None:
        if backend != "torch":
            raise ValueError(f"backend {backend!r} runs a bundle: build one with `blt-export build --out DIR` "
                             "and pass it (--bundle DIR)")
        source = default_source()
    return Generator(load_backend(backend, source, **options))


def default_source() -> Path:
    from fastblt.graphs import default_model_path

    path = default_model_path()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no default model is bundled at {path}; pass a checkpoint directory "
            "(create a random one with `blt-export init --out DIR`, or import an HF BLT)"
        )
    return path
