"""BLT-D objective: masks that cannot leak, training layout == inference layout, no copying."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastblt.graphs.config import tiny_config
from fastblt.graphs.model import BltModel
from fastblt.graphs.training.diffusion import block_logits, bltd_loss, greedy_targets, make_blocks, noise
from fastblt.runtime.backends.torch_ref import TorchBackend
from fastblt.runtime.session import Session


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8, 16), patch_threshold=3.5,
                      **kw)
    model = BltModel(cfg).eval()
    with torch.no_grad():  # a sharper random patcher gives varied patch lengths
        model.patcher.lm_head.weight.mul_(10.0)
    return model


def _ids(n, seed=0):
    rng = np.random.default_rng(seed)
    text = (b"def f(x):\n    return x * 2 + 1\n" * 40)[:n - 1]
    noisy = bytes(b if rng.random() > 0.2 else int(rng.integers(0, 256)) for b in text)
    return torch.tensor([[1] + [c + 4 for c in noisy]])


def _blocks_and_logits(model, ids_full, bsz, seed=0, t=0.5):
    details = model.forward_details(ids_full[:, :-1])
    blocks = make_blocks(details["starts"], ids_full, bsz, model.config.pad_id)
    gen = torch.Generator().manual_seed(seed)
    noisy, masked = noise(blocks, torch.full((ids_full.shape[0],), t), model.config.mask_id,
                          model.config.pad_id, gen)
    return blocks, noisy, masked, block_logits(model, ids_full, details, blocks, noisy)


@pytest.mark.parametrize("bsz", [4, 8, 16])
def test_block_rows_never_see_their_targets(bsz):
    """Perturbing clean bytes at or after a block's start changes none of that block's logits."""
    model = _model(window=24)
    ids_full = _ids(120)
    with torch.no_grad():
        blocks, noisy, _, logits = _blocks_and_logits(model, ids_full, bsz)
        assert int(blocks.valid.sum()) >= 8
        for j in range(int(blocks.valid.sum())):
            s = int(blocks.start[0, j])
            changed = ids_full.clone()
            changed[0, s:] = (changed[0, s:] * 7 + 3) % 256 + 4  # every byte from the block start on
            details = model.forward_details(changed[:, :-1])
            same_starts = torch.equal(details["starts"][0, : s + 1], model.forward_details(
                ids_full[:, :-1])["starts"][0, : s + 1])
            assert same_starts  # boundaries up to s depend on bytes < s only
            blocks2 = make_blocks(details["starts"], changed, bsz, model.config.pad_id)
            k = int((blocks2.start[0] == s).nonzero()[0, 0])
            blocks2.target[0, k] = blocks.target[0, j]
            noisy2 = noisy.clone()
            noisy2[0, k] = noisy[0, j]
            got = block_logits(model, changed, details, blocks2, noisy2)[0, k]
            assert torch.allclose(got, logits[0, j], atol=1e-5), f"block at {s} sees bytes ≥ its start"


def test_blocks_never_see_each_other():
    model = _model()
    ids_full = _ids(100)
    with torch.no_grad():
        blocks, noisy, _, logits = _blocks_and_logits(model, ids_full, 8, t=1.0)
        details = model.forward_details(ids_full[:, :-1])
        other = noisy.clone()
        other[0, 1:] = 4 + 65  # rewrite every block but the first
        again = block_logits(model, ids_full, details, blocks, other)
    assert torch.allclose(again[0, 0], logits[0, 0], atol=1e-5)
    assert not torch.allclose(again[0, 1], logits[0, 1], atol=1e-3)  # sanity: the edit does matter


@pytest.mark.parametrize("bsz", [4, 8])
def test_training_layout_equals_inference_layout(bsz):
    """The training forward's block logits equal Session + encoder scratch + decoder_block at inference."""
    model = _model(window=20)
    ids_full = _ids(90, seed=3)
    with torch.no_grad():
        blocks, noisy, _, logits = _blocks_and_logits(model, ids_full, bsz, t=0.6)
    backend = TorchBackend(model)
    ids = ids_full[0].tolist()
    checked = 0
    for j in range(int(blocks.valid.sum())):
        s = int(blocks.start[0, j])
        session = Session(backend)
        session.commit(ids[:s])
        assert session.patch_starts[-1] == s  # the prefix ends with a closed patch
        states = session.scratch_states(noisy[0, j].numpy())
        memory = np.repeat(session.memory[session.n_closed - 1][None], bsz, axis=0)
        got = session.block_logits(states, memory, bidirectional=True)
        assert np.abs(got - logits[0, j].numpy()).max() <= 1e-4
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("bsz", [4, 8])
def test_block_at_open_patch_start_equals_training_layout(bsz):
    """A block placed at the open patch's start (its known bytes unmasked, committed rows after the start
    hidden from it) is exactly the training block at that patch start."""
    model = _model(window=20)
    ids_full = _ids(90, seed=3)
    with torch.no_grad():
        blocks, noisy, _, _ = _blocks_and_logits(model, ids_full, bsz, t=0.6)
        details = model.forward_details(ids_full[:, :-1])
    backend = TorchBackend(model)
    ids = ids_full[0].tolist()
    checked = 0
    for j in range(int(blocks.valid.sum())):
        s = int(blocks.start[0, j])
        for known in range(1, bsz // 2 + 1):
            block = noisy[0, j].clone()
            block[:known] = torch.tensor(ids[s:s + known]) if s + known <= len(ids) else block[:known]
            session = Session(backend)
            session.commit(ids[:s + known])
            if session.patch_starts[-1] != s:  # the known bytes closed a patch: not an open-patch block
                continue
            start, latent = session.block_anchor(bsz, "patch")
            assert start == s and session.forced_closures == 0
            memory = np.repeat(latent[None], bsz, axis=0)
            got = session.block_logits(session.block_states(block.numpy(), start), memory, start=start)
            with torch.no_grad():
                want = block_logits(model, ids_full, details, blocks, torch.where(
                    torch.arange(blocks.target.shape[1])[:, None] == j, block, noisy[0]).unsqueeze(0))[0, j]
            assert np.abs(got - want.numpy()).max() <= 1e-4
            checked += 1
    assert checked >= 5


def test_greedy_targets_are_the_runtime_drafts():
    """Distillation targets: the clean pass's argmax, then the decoder drafting causally under the block's
    latent — what the runtime's block_logits computes with causal rows."""
    model = _model(window=20)
    ids_full = _ids(70, seed=5)
    with torch.no_grad():
        details = model.forward_details(ids_full[:, :-1])
        blocks = make_blocks(details["starts"], ids_full, 4, model.config.pad_id)
        targets = greedy_targets(model, ids_full, details, blocks)
    backend = TorchBackend(model)
    ids = ids_full[0].tolist()
    for j in range(int(blocks.valid.sum())):
        s = int(blocks.start[0, j])
        if s + 4 > len(ids) - 1:
            continue
        session = Session(backend)
        session.commit(ids[:s])
        want = [int(np.argmax(session.logits()[:260]))]
        memory = np.repeat(session.memory[session.n_closed - 1][None], 4, axis=0)
        for i in range(1, 4):
            block = np.array(want + [260] * (4 - i))
            logits = session.block_logits(session.block_states(block), memory, bidirectional=False)
            want.append(int(np.argmax(logits[i - 1][:260])))
        assert targets[0, j].tolist() == want, j


def test_distill_replaces_block_targets_not_the_clean_loss():
    model = _model()
    ids_full = torch.cat([_ids(80, seed=1), _ids(80, seed=2)])
    t = torch.tensor([0.5, 0.5])
    plain = bltd_loss(model, ids_full, 8, gen=torch.Generator().manual_seed(0), t=t, distill=1e-9)  # same draws
    distilled = bltd_loss(model, ids_full, 8, gen=torch.Generator().manual_seed(0), t=t, distill=1.0)
    assert torch.equal(plain["clean_loss"], distilled["clean_loss"])
    assert not torch.equal(plain["mask_loss"], distilled["mask_loss"])


def test_distill_rolls_out_only_the_chosen_rows_with_the_full_batch_targets():
    """The rollout runs on the chosen sequences alone; their targets equal a full-batch rollout's rows."""
    from fastblt.graphs.training.diffusion import _rows

    model = _model(window=20)
    ids_full = torch.cat([_ids(70, seed=s) for s in (1, 2, 3)])
    rows = torch.tensor([0, 2])
    with torch.no_grad():
        details = model.forward_details(ids_full[:, :-1])
        blocks = make_blocks(details["starts"], ids_full, 4, model.config.pad_id)
        full = greedy_targets(model, ids_full, details, blocks)
        part = greedy_targets(model, ids_full[rows], _rows(details, rows), _rows(blocks, rows))
    assert torch.equal(part, full[rows])


def test_loss_is_finite_and_weighted():
    model = _model()
    ids_full = torch.cat([_ids(80, seed=1), _ids(80, seed=2)])
    out = bltd_loss(model, ids_full, 8, gen=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and out["mask_loss"] > 0 and out["clean_loss"] > 0
    out["loss"].backward()
    assert model.local_decoder.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_mask_weight_scales_only_the_masked_term():
    model = _model()
    ids_full = torch.cat([_ids(80, seed=1), _ids(80, seed=2)])
    t = torch.tensor([0.3, 0.8])
    one = bltd_loss(model, ids_full, 8, gen=torch.Generator().manual_seed(0), t=t)
    quarter = bltd_loss(model, ids_full, 8, gen=torch.Generator().manual_seed(0), t=t, mask_weight=0.25)
    assert torch.equal(one["mask_loss"], quarter["mask_loss"]) and torch.equal(one["clean_loss"], quarter["clean_loss"])
    torch.testing.assert_close(quarter["loss"], one["clean_loss"] + 0.25 * one["mask_loss"])
    torch.testing.assert_close(one["loss"], one["clean_loss"] + one["mask_loss"])


def test_masked_loss_does_not_collapse_by_copying():
    """On incompressible random bytes the masked loss can only approach 0 through a leak."""
    torch.manual_seed(0)
    model = _model()
    model.train()
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("patcher.")], lr=3e-3)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        ids_full = torch.tensor(np.concatenate([np.ones((4, 1)), rng.integers(4, 260, (4, 64))], 1), dtype=torch.long)
        out = bltd_loss(model, ids_full, 8, gen=gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["masked_ce"] > 4.0, f"masked CE {float(out['masked_ce']):.2f} nats on random bytes: a leak"
    assert out["masked_acc"] < 0.1
