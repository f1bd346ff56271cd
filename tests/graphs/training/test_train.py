"""Training: a few-step smoke run, resume, 2-process DDP, decoder adaptation, and clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fastblt.graphs import load_model
from fastblt.graphs.config import tiny_config
from fastblt.graphs.model import BltModel
from fastblt.graphs.training.data import CorpusError, corpus_documents
from fastblt.graphs.training.pipeline import adapt_decoder, train_bltd
from fastblt.graphs.training.train import TrainConfig, Trainer, TrainError
from fastblt.graphs.training.train_state import ResumeError

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(60):
        (root / f"mod{i:02d}.py").write_text(TEXT * (1 + i % 3) + f"# file {i} é\n")
    return str(root)


def _cfg():
    return tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8), window=32)


def _tc(corpus, **kw):
    base = dict(objective="bltd", steps=6, seq_len=64, batch_size=2, block_sizes=(4, 8), block_probs=(0.5, 0.5),
                corpora=(corpus,), eval_every=3, eval_windows=4, ckpt_every=3, log_every=1, warmup=2)
    return TrainConfig(**{**base, **kw})


def test_smoke_and_resume(tmp_path, corpus):
    torch.manual_seed(0)
    tr = Trainer(BltModel(_cfg()), _tc(corpus, steps=4), tmp_path)
    hist = tr.train(progress=False)
    assert hist and np.isfinite(hist[-1]["heldout_bpb"]) and "4" in hist[-1]["masked_acc_one_step"]
    saved = load_file(str(tmp_path / "ckpt-bltd" / "model.safetensors"))
    again = Trainer(BltModel(_cfg()), _tc(corpus, steps=6), tmp_path)
    assert again.resume() and again.step == 4 and again.bytes_seen == tr.bytes_seen
    assert torch.equal(again.model.state_dict()["lm_head.weight"], saved["lm_head.weight"])
    assert len(again.opt.state) > 0
    again.train(progress=False)
    assert again.step == 6
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "step" in r and "eval" not in r][-1] == 6


def test_patcher_frozen_during_bltd(tmp_path, corpus):
    torch.manual_seed(0)
    model = BltModel(_cfg())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, _tc(corpus, steps=2, eval_every=10), tmp_path).train(progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("patcher."))
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


def test_two_process_ddp(tmp_path, corpus):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "fastblt.export.cli", "train", "--run-dir", str(tmp_path / "run"), "--preset", "tiny",
           "--corpus", corpus, "--patcher-steps", "4", "--steps", "4", "--batch-size", "2", "--seq-len", "64",
           "--block-sizes", "4,8", "--block-probs", "0.5,0.5", "--eval-every", "4", "--ckpt-every", "2",
           "--max-patch-length", "6", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    model = load_model(tmp_path / "run" / "model")
    assert model.config.block_sizes == (4, 8) and model.config.mask_id == 260
    state = json.loads((tmp_path / "run" / "ckpt-bltd" / "state.json").read_text())
    assert state["step"] == 4
    assert state["bytes_seen"] > 4 * 2 * 2 * 10  # both ranks' batches are counted
    assert "model" in (tmp_path / "run" / "model" / "README.md").read_text().lower()


def test_decoder_adaptation_on_hf_blt(tmp_path, corpus, hf_checkpoints):
    src = hf_checkpoints["k2-4bpp"]
    original = load_model(src)
    tc = _tc(corpus, objective="decoder", steps=3, block_sizes=(4,), block_probs=(1.0,))
    out = adapt_decoder(src, tmp_path / "run", tc, progress=False)
    adapted = load_model(out)
    assert adapted.config.block_sizes == (4,) and adapted.config.vocab_size == 262
    a, b = original.state_dict(), adapted.state_dict()
    for name in a:
        if name.startswith(("patcher.", "global_transformer.", "encoder_hash")) or (
                name.startswith("local_encoder.") and "embed_tokens" not in name):
            assert torch.equal(a[name], b[name][: a[name].shape[0]]), f"{name} must stay frozen"
    assert torch.equal(a["local_encoder.embed_tokens.weight"], b["local_encoder.embed_tokens.weight"][:260])
    assert not torch.equal(a["lm_head.weight"], b["lm_head.weight"][:260])
    ids = torch.tensor([[1] + [c + 4 for c in TEXT.encode()][:40]])
    with torch.no_grad():  # boundaries are those of the original model
        assert torch.equal(original.forward_details(ids)["starts"], adapted.forward_details(ids)["starts"])
    record = json.loads((out / "training.json").read_text())  # the lineage names the decoder-only stage
    assert record["stages"][-1]["objective"] == "decoder" and record["stages"][-1]["steps"] == 3
    assert "decoder only" in (out / "README.md").read_text()


def test_continue_a_trained_model(tmp_path, corpus):
    """--init-from: every weight, the patcher and θ carry over; the training record chains the stages."""
    cfg = dataclasses.replace(_cfg(), max_patch_length=6)
    first = train_bltd(tmp_path / "a", cfg, _tc(corpus, objective="patcher", steps=2), _tc(corpus, steps=2),
                       target_patch=3.0, progress=False)
    second = train_bltd(tmp_path / "b", cfg, _tc(corpus, objective="patcher", steps=2),
                        _tc(corpus, steps=3, lr=1e-3, mask_weight=0.5), progress=False, init_from=first)
    a, b = load_model(first), load_model(second)
    assert a.config == b.config  # θ, patch cap and vocabulary of the earlier model, not the preset's
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict() if k.startswith("patcher."))
    assert not torch.equal(a.state_dict()["lm_head.weight"], b.state_dict()["lm_head.weight"])
    rec_a = json.loads((first / "training.json").read_text())
    rec = json.loads((second / "training.json").read_text())
    assert [st["init"] for st in rec["stages"]] == ["scratch", "continued"]
    assert rec["stages"][0] == rec_a["stages"][0] and rec["patching"] == rec_a["patching"]
    assert rec["stages"][1]["steps"] == 3 and rec["stages"][1]["lr"] == 1e-3
    assert rec["stages"][0]["mask_weight"] == 1.0 and rec["stages"][1]["mask_weight"] == 0.5
    card = (second / "README.md").read_text()
    assert "BLT-D stage 1 (scratch)" in card and "BLT-D stage 2 (continued)" in card
    assert "L_clean + 1·L_mask" in card and "L_clean + 0.5·L_mask" in card
    total = sum(st["bytes_seen"] for st in rec["stages"])
    assert f"{total:,}" in card
    # rerunning the same command resumes the finished run: no third stage, same weights
    again = train_bltd(tmp_path / "b", cfg, _tc(corpus, objective="patcher", steps=2),
                       _tc(corpus, steps=3, lr=1e-3, mask_weight=0.5), progress=False, init_from=first)
    assert len(json.loads((again / "training.json").read_text())["stages"]) == 2
    assert torch.equal(load_model(again).state_dict()["lm_head.weight"], b.state_dict()["lm_head.weight"])


def test_bad_inputs(tmp_path, corpus):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="has no train documents"):
        corpus_documents([str(tmp_path / "empty")])
    with pytest.raises(CorpusError, match="does not exist"):
        corpus_documents([str(tmp_path / "missing")])
    with pytest.raises(TrainError, match="block size 16 must be smaller than the local window"):
        _tc(corpus, block_sizes=(16,), block_probs=(1.0,)).validate(
            dataclasses.replace(_cfg(), block_sizes=(4,), encoder=_cfg().encoder,
                                decoder=dataclasses.replace(_cfg().decoder, window=16)))
    with pytest.raises(TrainError, match="needs a config with mask_id and pad_id"):
        _tc(corpus).validate(tiny_config())
    with pytest.raises(TrainError, match="mask_weight=0.0 must be > 0"):
        _tc(corpus, mask_weight=0.0).validate(_cfg())
    tr = Trainer(BltModel(_cfg()), _tc(corpus, steps=1, eval_every=5), tmp_path)
    tr.train(progress=False)
    (tmp_path / "ckpt-bltd" / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.raises(ResumeError, match="corrupt or incomplete resume checkpoint"):
        Trainer(BltModel(_cfg()), _tc(corpus, steps=2), tmp_path).resume()


def test_model_card_names_weighted_corpora_and_where_they_start():
    from fastblt.graphs.training.pipeline import model_card

    stage = dict(objective="bltd", init="continued", steps=10, processes=2, batch_size=4, seq_len=512, lr=1e-3,
                 block_sizes=[4, 8], block_probs=[0.5, 0.5], bytes_seen=1000, seconds=36.0, history=[])
    record = {"patching": {"patch_threshold": 2.0, "max_patch_length": 8, "mean_patch_size": 4.0,
                           "target_patch_size": 4.0},
              "stages": [dict(stage, init="scratch"), dict(stage, corpora=["stdlib", "stdlib", "/data/mixed"])]}
    card = model_card(_cfg(), record)
    assert "corpora stdlib ×2, mixed;" in card and "from stage 2 on also the corpora its row names" in card
    assert card.count("corpora stdlib") == 1  # stage 1 (stdlib only) names no corpora


def test_device_errors_name_the_fix():
    with pytest.raises(TrainError, match="not a torch device name"):
        _tc("stdlib", device="gpu0").validate(_cfg())
    with pytest.raises(TrainError, match="'cpu' or 'cuda"):
        _tc("stdlib", device="meta").validate(_cfg())
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="sees no CUDA GPU; train with --device cpu"):
            _tc("stdlib", device="cuda").validate(_cfg())
