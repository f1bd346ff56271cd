"""fastblt.graphs — what gets exported: the PyTorch BLT, its config, its incremental graphs, checkpoints and
HF import/export; `training/` makes the model (corpora, training loop, evaluation, patcher θ search).

`config`, `constants`, `spec`, `patching`, `atomic` and `checkpoint` (up to loading) import without torch; the
model is imported on first use.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastblt.graphs.checkpoint import (
    CheckpointError,
    CheckpointTensor,
    checkpoint_index,
    checkpoint_tensor,
    read_config,
    save_model,
)
from fastblt.graphs.config import BltConfig, ConfigError, TransformerConfig, tiny_config

__all__ = [
    "BltConfig", "TransformerConfig", "ConfigError", "CheckpointError", "load_model", "save_model",
    "read_config", "tiny_config", "default_model_path", "checkpoint_index", "checkpoint_tensor", "CheckpointTensor",
]


def load_model(path: str | Path, dtype: Any = None, *, skip: Iterable[str] = ()):
    """Load a native or HF-format BLT checkpoint directory (eval mode; `skip`: names left on the meta device).
    Needs torch."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ImportError("loading a PyTorch BLT needs torch: pip install 'fastblt[torch]'") from None
    from fastblt.graphs.checkpoint import load_model as _load

    return _load(path, dtype, skip=skip)


def default_model_path() -> Path:
    """Directory of the embedded default model shipped with fastblt."""
    return Path(__file__).resolve().parent / "default_model"
