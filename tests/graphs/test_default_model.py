"""The shipped default model: loads, fits the size budget, and the verification modes stay lossless on a
trained model (where drafts are good enough to be accepted, so verification really is exercised)."""

from __future__ import annotations

import itertools
import json

import pytest

from fastblt.graphs import default_model_path, load_model
from fastblt.graphs.params import param_counts
from fastblt.runtime.backends.torch_ref import TorchBackend
from fastblt.runtime.generator import Generator
from fastblt.runtime.unmask import UnmaskConfig

PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n\n\ndef main(", "class Stack:\n    def __init__(self",
           "    for i, line in enumerate(lines):\n        if "]


@pytest.fixture(scope="module")
def gen():
    return Generator(TorchBackend(load_model(default_model_path())))


def test_shipped_model_card_and_size():
    path = default_model_path()
    assert (path / "model.safetensors").stat().st_size <= 40 * 2**20
    card = (path / "README.md").read_text()
    assert "held-out next-byte bits/byte" in card and "mean patch length" in card
    cfg = load_model(path).config
    assert cfg.block_sizes == (4, 8, 16) and cfg.max_patch_length == 8
    counts = param_counts(cfg)
    assert counts["global"] >= 5 * counts["decoder"]


def test_shipped_training_record_matches_model_and_card():
    """training.json (what --init-from continues from) agrees with the config and the model card."""
    path = default_model_path()
    record = json.loads((path / "training.json").read_text())
    cfg = load_model(path).config
    assert record["patching"]["patch_threshold"] == cfg.patch_threshold
    assert record["patching"]["max_patch_length"] == cfg.max_patch_length
    card = (path / "README.md").read_text()
    stages = record["stages"]
    assert stages[0]["init"] == "scratch" and all(st["objective"] == "bltd" for st in stages)
    assert f"{sum(st['bytes_seen'] for st in stages):,}" in card
    for i, st in enumerate(stages, 1):
        assert f"BLT-D stage {i} ({st['init']}) | {st['steps']} steps" in card


def test_greedy_verification_modes_equal_ar(gen):
    accepted = 0
    for prompt in PROMPTS:
        ar = gen.generate(prompt, mode="ar", max_new_bytes=48)
        for k in (2, 4, 8, 16):
            out = gen.generate(prompt, mode="blts", max_new_bytes=48, draft_k=k)
            assert out.bytes == ar.bytes, (prompt, k)
        rules = [UnmaskConfig("one_step"), UnmaskConfig("confidence", alpha=0.3), UnmaskConfig("entropy", gamma=1.5)]
        for block, rule in itertools.product((4, 8, 16), rules):
            out = gen.generate(prompt, mode="bltdv", max_new_bytes=48, block_size=block, unmask=rule)
            assert out.bytes == ar.bytes, (prompt, block, rule)
            accepted += out.counters["bytes_accepted"]
    assert accepted > 0  # trained drafts do get accepted: the verifier's accept path is exercised
