"""Config JSON round trip and validation errors that name the field."""

from __future__ import annotations

import json

import pytest

from fastblt.graphs.config import BltConfig, ConfigError, tiny_config


def test_json_round_trip():
    cfg = tiny_config(mask_id=260, pad_id=261, vocab_size=262, block_sizes=(4, 8, 16))
    again = BltConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.diffusion_trained and not tiny_config().diffusion_trained


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(bogus=1), r"unknown field\(s\) \['bogus'\].*allowed fields"),
        (lambda d: d["encoder"].update(heads=4), r"encoder: unknown field\(s\) \['heads'\]"),
        (lambda d: d.update(cross_attn_k=0), r"cross_attn_k=0 must be a positive integer"),
        (lambda d: d.update(block_sizes=[5]), r"block_sizes contains 5; allowed values are \[4, 8, 16, 32\]"),
        (lambda d: d["decoder"].update(dim=48), r"encoder.dim=32 and decoder.dim=48 must be equal"),
        (lambda d: d["global_transformer"].update(n_heads=3), r"global_transformer.dim=64 must be n_heads=3"),
        (lambda d: d.update(mask_id=5, vocab_size=262), r"mask_id=5 must be in \[260, vocab_size=262\)"),
        (lambda d: d.pop("patcher"), r"required field 'patcher' is missing"),
        (lambda d: d.update(format_version=99), r"format_version=99 is not supported"),
        (lambda d: d.update(max_patch_length=-2), r"max_patch_length=-2"),
    ],
)
def test_invalid_fields_are_named(edit, message):
    data = json.loads(tiny_config().to_json())
    edit(data)
    with pytest.raises(ConfigError, match=message):
        BltConfig.from_dict(data)


def test_not_json():
    with pytest.raises(ConfigError, match="not valid JSON"):
        BltConfig.from_json("{", "x/config.json")
