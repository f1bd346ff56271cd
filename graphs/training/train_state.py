"""Resumable training state without pickle: model and AdamW tensors in safetensors, the rest in JSON.

Written through graphs/atomic.py (a temp directory swapped in), so an interrupted save never leaves a half
checkpoint behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fastblt.graphs.atomic import atomic_dir

STATE_FILE = "state.json"


class ResumeError(ValueError):
    """A resume checkpoint is missing pieces or does not match the model being trained."""


def save_state(path: Path, model, opt: torch.optim.Optimizer, meta: dict) -> None:
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        sd = opt.state_dict()
        tensors = {}
        for idx, st in sd["state"].items():
            for key, value in st.items():
                tensors[f"{idx}.{key}"] = value.detach().reshape(-1) if value.dim() == 0 else value.detach()
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "optimizer.safetensors"))
        groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in sd["param_groups"]]
        (tmp / "model_config.json").write_text(model.config.to_json())
        (tmp / STATE_FILE).write_text(json.dumps({**meta, "param_groups": groups,
                                                  "scalar_keys": sorted(k for k, v in tensors.items()
                                                                        if v.numel() == 1 and k.endswith(".step"))}))


def load_state(path: Path, model, opt: torch.optim.Optimizer) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / STATE_FILE).read_text())
        weights = load_file(str(path / "model.safetensors"))
        tensors = load_file(str(path / "optimizer.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ResumeError(f"{path}: corrupt or incomplete resume checkpoint ({exc}); delete it to start over "
                          "or point --run-dir elsewhere") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ResumeError(f"{path}: the checkpoint's weights do not fit this model ({str(exc)[:300]})") from None
    state: dict = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value.reshape(()) if key in meta["scalar_keys"] else value
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise ResumeError(f"{path}: optimizer state does not fit this run ({exc})") from None
    return meta


def load_weights(path: Path, model) -> None:
    """Only the model tensors of a training checkpoint (e.g. the trained patcher for the next stage)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(Path(path) / "model.safetensors")))
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise ResumeError(f"{path}: cannot load the model weights ({str(exc)[:300]})") from None
