"""Backends reject malformed graph inputs with one clear error naming the input."""

from __future__ import annotations

import numpy as np
import pytest

from fastblt.runtime.backends import FeedError
from fastblt.runtime.backends.torch_ref import TorchBackend


def _feeds(cfg, t=3):
    n, h, d = cfg.encoder.n_layers, cfg.encoder.kv_heads, cfg.encoder.head_dim
    return {
        "ids": np.full((1, t), 70, dtype=np.int64),
        "hash_embeds": np.zeros((1, t, cfg.encoder.dim), dtype=np.float32),
        "positions": np.arange(t, dtype=np.int64)[None],
        "past_key": np.zeros((n, 1, h, 0, d), dtype=np.float32),
        "past_value": np.zeros((n, 1, h, 0, d), dtype=np.float32),
    }


def test_good_feeds_run(tiny_model):
    out = TorchBackend(tiny_model).run("encoder", _feeds(tiny_model.config))
    assert out["states"].shape == (1, 3, tiny_model.config.encoder.dim)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.pop("positions"), r"missing inputs \['positions'\]"),
        (lambda f: f.update(extra=np.zeros(1)), r"unexpected inputs \['extra'\]"),
        (lambda f: f.update(ids=f["ids"].astype(np.int32)), r"'ids' must be a numpy int64 array, got int32"),
        (lambda f: f.update(ids=f["ids"][0]), r"'ids' must have shape \('b', 't'\) \(rank 2\), got \(3,\)"),
        (lambda f: f.update(hash_embeds=f["hash_embeds"].astype(np.float64)),
         r"'hash_embeds' must be a numpy float32 array, got float64"),
        (lambda f: f.update(past_key=f["past_key"][:, :, :1]), r"'past_key' axis 2 must be 4"),
    ],
)
def test_bad_feeds(tiny_model, edit, message):
    feeds = _feeds(tiny_model.config)
    edit(feeds)
    with pytest.raises(FeedError, match=message):
        TorchBackend(tiny_model).run("encoder", feeds)


def test_model_rejects_bad_ids(tiny_model):
    import torch

    with pytest.raises(ValueError, match=r"ids must be an integer tensor \[batch, n\]"):
        tiny_model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 260\)"):
        tiny_model(torch.tensor([[1, 999]]))
