"""save_hf / `blt-export export-hf`: fastblt → HF BLT directory, read back by fastblt and by stock transformers."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from blt_helpers import PROMPTS, ids_of
from click.testing import CliRunner

from fastblt.export.cli import main as export_main
from fastblt.graphs import load_model, read_config, save_model
from fastblt.graphs.config import tiny_config
from fastblt.graphs.hf_export import save_hf
from fastblt.graphs.model import BltModel

BLTD = dict(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8))
IDS = [torch.tensor([ids_of(p)]) for p in PROMPTS]


def _tiny(seed: int = 0, **overrides) -> BltModel:
    """A random tiny BLT with a sharpened patcher and θ set for ~4 bytes/patch, midway between two observed
    entropies so float noise cannot flip a boundary between implementations."""
    torch.manual_seed(seed)
    model = BltModel(tiny_config(window=16, **overrides)).eval()
    with torch.no_grad():
        model.patcher.lm_head.weight.mul_(8.0)
        model.patcher.lm_head.weight[260:].mul_(5.0)  # weighty MASK/PAD rows: a leak into HF's entropy would show
        ent = torch.sort(torch.cat([model.forward_details(ids)["entropies"][0, 1:] for ids in IDS])).values
    i = int(0.75 * len(ent))
    model.config = dataclasses.replace(model.config, patch_threshold=float(ent[i - 1] + ent[i]) / 2)
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)


@pytest.mark.parametrize("overrides, drop", [({}, True), (BLTD, True), (BLTD, False)],
                         ids=["bytes", "bltd-drop", "bltd-keep"])
def test_round_trip_through_load_model(tmp_path, overrides, drop):
    model = _tiny(**overrides)
    path = save_hf(model, tmp_path / "hf", drop_special_rows=drop)
    save_hf(model, path, drop_special_rows=drop)  # over an existing directory, atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    cfg, kind = read_config(path)
    vocab = 260 if drop else model.config.vocab_size
    assert kind == "hf" and cfg.vocab_size == vocab and cfg.max_patch_length == 8
    if not overrides:
        assert cfg == model.config
    again = load_model(path)
    for ids in IDS:
        assert (_logits(again, ids) - _logits(model, ids)[..., :vocab]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("overrides, rows", [({"max_patch_length": None}, 0), ({**BLTD, "max_patch_length": None}, 0),
                                             ({}, 1)], ids=["bytes", "bltd-drop", "maxlen-kept"])
def test_stock_transformers_loads_the_same_model(tmp_path, overrides, rows):
    """`rows` = trailing rows skipped: with a max patch length, HF's last row ignores the next byte's boundary."""
    transformers = pytest.importorskip("transformers")
    model = _tiny(seed=1, **overrides)
    path = save_hf(model, tmp_path / "hf")
    hf, info = transformers.BltForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf.eval()
    for ids in IDS:
        n = ids.shape[1] - rows
        ours = _logits(model, ids)[:, :n, :260]
        with torch.no_grad():
            ref = hf(ids, use_cache=False).logits[:, :n]
        assert ref.shape == ours.shape
        assert (ours - ref).abs().max().item() <= 1e-4
        assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_bad_input_is_one_clear_error(tmp_path):
    model = _tiny()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; pass a directory"):
        save_hf(model, tmp_path / "file")
    with pytest.raises(ValueError, match="needs a fastblt BltModel, got dict"):
        save_hf({}, tmp_path / "out")
    with pytest.raises(ValueError, match="must be 'keep' or None"):
        save_hf(model, tmp_path / "out", max_patch_length=4)
    model.config = dataclasses.replace(model.config, decoder=dataclasses.replace(model.config.decoder, window=8))
    with pytest.raises(ValueError, match="one local_attention_window_len for both"):
        save_hf(model, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_export_hf(tmp_path):
    ckpt = save_model(_tiny(**BLTD), tmp_path / "native")
    runner = CliRunner()
    res = runner.invoke(export_main, ["export-hf", str(ckpt), "--out", str(tmp_path / "hf")])
    assert res.exit_code == 0, res.output
    assert str(tmp_path / "hf") in res.output and "vocab_size 260" in res.output
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vocab_size"] == 260 and config["max_patch_length"] == 8
    res = runner.invoke(export_main, ["export-hf", str(ckpt), "--out", str(tmp_path / "hf2"), "--keep-special-rows",
                                      "--no-max-patch-length"])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "hf2" / "config.json").read_text())
    assert config["vocab_size"] == 262 and config["max_patch_length"] is None
    assert load_model(tmp_path / "hf2").config.vocab_size == 262
    res = runner.invoke(export_main, ["export-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "no such checkpoint directory" in res.output and "Traceback" not in res.output


def test_plain_forward_and_generate_in_transformers_equal_fastblt(tmp_path):
    """The exported config carries use_cache: false, so the calls a user writes first work: `model(ids)` and
    `generate(ids)` (no use_cache argument) run the exported model and agree with fastblt, logits and greedy bytes.
    transformers' cached BLT path needs a num_hidden_layers that no BLT config carries."""
    transformers = pytest.importorskip("transformers")
    model = _tiny(seed=1, max_patch_length=None)
    path = save_hf(model, tmp_path / "hf")
    assert json.loads((path / "config.json").read_text())["use_cache"] is False
    hf = transformers.BltForCausalLM.from_pretrained(path).eval()
    ids = IDS[0]
    with torch.no_grad():
        assert (hf(ids).logits - _logits(model, ids)[..., :260]).abs().max().item() <= 1e-4
        out = hf.generate(ids, max_new_tokens=12, do_sample=False)
        seq = ids
        for _ in range(12):
            seq = torch.cat([seq, _logits(model, seq)[:, -1:, :260].argmax(-1)], 1)
    assert torch.equal(out, seq)
