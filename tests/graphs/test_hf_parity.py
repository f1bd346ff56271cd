"""fastblt's BLT is the same model as transformers.BltForCausalLM (random-initialised, save_pretrained)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from blt_helpers import PROMPTS, ids_of
from conftest import HF_CONFIGS

from fastblt.graphs import load_model
from fastblt.runtime import host

transformers = pytest.importorskip("transformers")


def _hf_patch_lengths(hf, ids):
    cfg = hf.config
    _, lengths, _ = hf.model.patcher(ids, patch_size=cfg.patch_size, threshold=cfg.patching_threshold,
                                     max_patch_length=cfg.max_patch_length)
    return [int(x) for x in lengths[0] if int(x) > 0]


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_logits_and_boundaries_match_transformers(hf_checkpoints, name):
    path = hf_checkpoints[name]
    hf = transformers.BltForCausalLM.from_pretrained(path).eval()
    ours = load_model(path)
    bytes_per_patch = []
    for prompt in PROMPTS:
        ids = torch.tensor([ids_of(prompt)])
        n = ids.shape[1]
        with torch.no_grad():
            details = ours.forward_details(ids)
            if hf.config.max_patch_length is None:
                ref = hf(ids, use_cache=False).logits
                ref_lengths = _hf_patch_lengths(hf, ids)
            else:
                # HF splits long patches only inside the given ids and drops the zero-length "next" patch,
                # so its last row ignores the boundary the next byte would bring. Any appended byte makes
                # HF decide it; fastblt (like incremental decoding) always decides it.
                ext = torch.cat([ids, torch.tensor([[ord("x") + 4]])], dim=1)
                ref = hf(ext, use_cache=False).logits[:, :n]
                ref_lengths = _hf_patch_lengths(hf, ext)
                ref_lengths[-1] -= 1
                ref_lengths = [x for x in ref_lengths if x > 0]
        ours_lengths = host.patch_lengths(details["starts"][0].numpy())
        assert ours_lengths == ref_lengths, f"{name}: patch boundaries differ on {prompt!r}"
        err = (details["logits"][..., :260] - ref).abs().max().item()
        assert err <= 1e-4, f"{name}: max |Δlogit| = {err:.2e} on {prompt!r}"
        bytes_per_patch.append(n / len(ours_lengths))
    target = HF_CONFIGS[name]["bytes_per_patch"]
    assert 0.5 * target <= float(np.mean(bytes_per_patch)) <= 2.0 * target, bytes_per_patch


def test_batched_forward_equals_rows(hf_checkpoints):
    model = load_model(hf_checkpoints["k2-4bpp"])
    a, b = ids_of(PROMPTS[0])[:40], ids_of(PROMPTS[1])[:40]
    with torch.no_grad():
        both = model(torch.tensor([a, b]))
        one = model(torch.tensor([b]))
    assert (both[1:] - one).abs().max().item() <= 1e-5
