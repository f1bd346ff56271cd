"""Bundles: ORT = torch per graph, identical greedy bytes across backends in all modes, INT8 quality,
and one clear error per broken bundle or impossible request."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fastblt.export import bundle as bundle_mod
from fastblt.export.bundle import BuildError, build_bundle
from fastblt.export.calibration import greedy_agreement
from fastblt.export.quantize import QuantizeError, modelopt_available
from fastblt.graphs.config import TransformerConfig, tiny_config
from fastblt.graphs.model import BltModel
from fastblt.graphs.training.data import windows
from fastblt.runtime.backends.ort import OrtBackend
from fastblt.runtime.backends.torch_ref import TorchBackend
from fastblt.runtime.generator import Generator
from fastblt.runtime.manifest import BundleError, Manifest
from fastblt.runtime.unmask import UnmaskConfig

pytest.importorskip("onnxruntime")
TEXT = b"def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n" * 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # head_dim 16 with 2:1 GQA: the decoder takes the packed fused path, patcher and encoder (head_dim 8) the other
    gqa = TransformerConfig(dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, window=64, max_positions=4096)
    m = BltModel(tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8), patch_threshold=3.5,
                             decoder=gqa)).eval()
    with torch.no_grad():
        m.patcher.lm_head.weight.mul_(10.0)
        m.lm_head.weight.mul_(3.0)
    return m


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    heldout = list(windows(TEXT, 96))[:3]
    return build_bundle(model, out, ("fp32", "int8"), engines="no", log=lambda m: None, heldout=heldout)


def test_manifest_and_per_graph_parity(built):
    manifest = Manifest.load(built)
    assert manifest.precisions == ("fp32", "int8") and manifest.block_sizes == (4, 8)
    assert sorted(manifest.graphs) == ["decoder_block_4", "decoder_block_8", "decoder_step", "encoder",
                                      "fused_decoder_step", "fused_draft_step", "fused_encoder", "fused_global",
                                      "fused_patcher", "global", "patcher"]
    for key in ("fused_patcher", "fused_global"):  # the CPU layout: fp32 (and int8-dynamic), never Q/DQ
        assert manifest.graphs[key].layout == "fused" and sorted(manifest.graphs[key].files) == ["fp32"]
    for key, report in manifest.validation.items():
        assert set(report) == {"sample", "real_text"}, key
        for kind in report.values():
            for name, err in kind.items():
                assert err["max_abs"] <= 1e-4, (key, name, err)
    assert abs(manifest.quality["fp32"]["heldout_bpb"] - manifest.quality["torch"]["heldout_bpb"]) < 1e-4


def test_backends_identical_greedy_in_all_modes(built, model):
    fused, standard = OrtBackend(built, "fp32"), OrtBackend(built, "fp32", layout="standard")
    assert (fused.layout, standard.layout) == ("fused", "standard")
    assert OrtBackend(built, "int8").layout == "standard"  # no fused Q/DQ graphs
    gens = [Generator(fused), Generator(standard)]
    ref = Generator(TorchBackend(model))
    cases = [dict(mode="ar"), dict(mode="blts", draft_k=4), dict(mode="bltd", block_size=4),
             dict(mode="bltd", block_size=8, unmask=UnmaskConfig("entropy", gamma=1.0)),
             dict(mode="bltdv", block_size=8), dict(mode="bltdv", block_size=4, unmask=UnmaskConfig("confidence"))]
    for prompt in ("def f(x):", "", "über 東京", TEXT[:150]):  # the last runs past the 64-byte window
        for case in cases:
            a = ref.generate(prompt, max_new_bytes=40, **case)
            for gen in gens:
                b = gen.generate(prompt, max_new_bytes=40, **case)
                assert a.bytes == b.bytes, (prompt, case, gen.backend.layout)
                assert a.counters["n_dec"] == b.counters["n_dec"]


def test_fused_layout_updates_the_session_cache_in_place(built):
    """After commits, drafts, scratch calls and rollbacks the fused path's caches hold exactly the entries
    the standard path's appends produce (window shifts included), and a scratch call leaves them alone."""
    from fastblt.runtime.session import Session

    fused, standard = Session(OrtBackend(built, "fp32")), Session(OrtBackend(built, "fp32", layout="standard"))
    ids = [1] + [b + 4 for b in (TEXT * 2)[:420]]
    for s in (fused, standard):
        s.commit(ids[:300])
        for i in ids[300:360]:
            s.commit([i])
        s.rollback(350)
        s.draft_step(ids[350])
        s.draft_step(ids[351])
        s.discard_drafts()
        s.commit(ids[350:400])
        s.scratch_states([260, 260, 260, 260])
        s.last_latent()
    for stack in fused.caches:
        a, b = fused.caches[stack], standard.caches[stack]
        assert (a.start, a.length) == (b.start, b.length), stack
        assert np.abs(a.k[..., :a.length, :] - b.k[..., :b.length, :]).max() <= 1e-5, stack
        assert np.abs(a.v[..., :a.length, :] - b.v[..., :b.length, :]).max() <= 1e-5, stack
    assert fused.caches["encoder"].start > 0  # the window shifted the cache at least once
    assert np.abs(fused.logits() - standard.logits()).max() <= 1e-4


def test_fused_draft_step_equals_encoder_then_decoder_step(built):
    """BLT-S's one-call draft (fused draft_step) gives the logits, encoder states and cache entries of the
    encoder and decoder_step calls it replaces, past the window edge and after rollbacks; a bundle without
    the graph drafts with the two calls."""
    from fastblt.runtime.session import Session

    one, two = OrtBackend(built, "fp32"), OrtBackend(built, "fp32")
    two._in_place.pop("draft_step")
    two.in_place_graphs = frozenset(two._in_place)
    assert "draft_step" in one.in_place_graphs
    a, b = Session(one, slack=8), Session(two, slack=8)
    ids = [1] + [x + 4 for x in TEXT[:200]]
    for s in (a, b):
        s.commit(ids[:60])
    for n in range(61, 200, 7):
        for s in (a, b):
            s.commit(ids[s.length:n])
        drafted = [(a.draft_step(i), b.draft_step(i)) for i in ids[n:n + 6]]
        for x, y in drafted:
            assert np.abs(x - y).max() <= 1e-5
        assert all(np.abs(x - y).max() <= 1e-6 for x, y in zip(a.draft_states, b.draft_states, strict=True))
        for stack in ("encoder", "decoder"):
            ca, cb = a.caches[stack], b.caches[stack]
            assert (ca.start, ca.length) == (cb.start, cb.length), stack
            assert np.abs(ca.k[..., :ca.length, :] - cb.k[..., :cb.length, :]).max() <= 1e-5, stack
        keep = n % 3
        for s in (a, b):
            s.commit(ids[n:n + keep + 1])  # reuses the encoder work of the drafts it shares
    assert a.calls["draft_step"] == 6 * 20 and "draft_step" not in b.calls
    assert np.abs(a.logits() - b.logits()).max() <= 1e-4
    with pytest.raises(ValueError, match="byte id 262 must lie in"):
        a.draft_step(262)


def test_one_row_calls_match_the_general_binding_and_never_alias(built):
    """Decode steps (t = 1) run on bound-once buffers: the same logits and cache entries as binding every
    tensor anew, and each result is a fresh array that the next call does not overwrite."""
    from fastblt.runtime.session import Session

    session = Session(OrtBackend(built, "fp32"))
    session.commit([1] + [b + 4 for b in TEXT[:120]])
    graph = session.backend._in_place["decoder_step"]
    assert graph.row is not None and session.backend._in_place["global"].row is None  # P and L are dynamic
    cache, n = session.caches["decoder"], session.length
    feeds = {"states": np.full((1, 1, 32), 0.5, np.float32), "positions": np.array([[n]]),
             "memory": session.memory[session.n_closed - 1][None, None].copy()}
    fast = graph.run(dict(feeds), cache, False, True)["logits"]
    entry = cache.k[:, :, :, cache.length].copy()
    graph.row, row = None, graph.row
    general = graph.run(dict(feeds), cache, False, True)["logits"]
    graph.row = row
    assert np.array_equal(fast, general) and np.array_equal(entry, cache.k[:, :, :, cache.length])
    feeds["states"] = np.full((1, 1, 32), -0.5, np.float32)
    other = graph.run(dict(feeds), cache, False, True)["logits"]
    assert np.array_equal(fast, general) and not np.allclose(other, fast)


def test_layout_errors(built):
    with pytest.raises(ValueError, match="valid layouts are"):
        OrtBackend(built, "fp32", layout="fast")
    with pytest.raises(BundleError, match="no fused int8 graphs"):
        OrtBackend(built, "int8", layout="fused")


def test_an_onnxruntime_that_cannot_load_the_fused_graphs(built, monkeypatch):
    """An older ONNX Runtime refusing the fused graphs' contrib-op inputs: auto falls back to the standard
    graphs with a warning, an explicit fused request gets one clear error."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    real = ort.InferenceSession

    def old_runtime(path, *args, **kwargs):
        if "fused_" in str(path):
            raise state.Fail("Node (GroupQueryAttention) input arg (position_ids) does not have type information")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", old_runtime)
    with pytest.warns(RuntimeWarning, match="cannot load this bundle's fused CPU graphs"):
        backend = OrtBackend(built, "fp32")
    assert backend.layout == "standard" and not backend.in_place_graphs
    with pytest.raises(BundleError, match=r"upgrade it .*or use layout='standard'"):
        OrtBackend(built, "fp32", layout="fused")


def test_int8_runs_and_is_reported(built):
    q = Manifest.load(built).quality
    assert np.isfinite(q["int8"]["heldout_bpb"])
    agree = q["int8"]["greedy_agreement_vs_fp32"]
    share = agree["identical"] * agree["prompts"]  # a count of prompts
    assert agree["prompts"] > 0 and share == pytest.approx(round(share))
    fp32 = OrtBackend(built, "fp32")
    same = greedy_agreement(fp32, fp32, [b"def f(x):", b"import os\n"], new_bytes=8)
    assert same["identical"] == 1.0 and same["mean_shared_prefix_bytes"] == np.mean(
        [len(Generator(fp32).generate(p, max_new_bytes=8).bytes) for p in (b"def f(x):", b"import os\n")])
    out = Generator(OrtBackend(built, "int8")).generate("def f(x):", max_new_bytes=16)
    assert out.counters["new_bytes"] == len(out.bytes) > 0


def test_broken_bundles(built, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(built, copy)
    (copy / "fp32" / "encoder.onnx").unlink()
    OrtBackend(copy).close()  # the fused layout opens only its own files (fused_encoder.onnx)
    with pytest.raises(BundleError, match="encoder.onnx: missing from the bundle"):
        OrtBackend(copy, layout="standard")
    shutil.copy(built / "fp32" / "encoder.onnx", copy / "fp32" / "encoder.onnx")
    raw = bytearray((copy / "fp32" / "global.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "fp32" / "global.onnx").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="global.onnx: sha256 does not match manifest.json"):
        OrtBackend(copy, layout="standard")
    with (copy / "fp32" / "global.onnx").open("ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(BundleError, match=r"global.onnx: \d+ bytes, manifest.json lists \d+ \(the file was truncated"):
        OrtBackend(copy, layout="standard")
    shutil.copy(built / "fp32" / "global.onnx", copy / "fp32" / "global.onnx")
    data = json.loads((copy / "manifest.json").read_text())
    data["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        OrtBackend(copy)
    with pytest.raises(BundleError, match="no manifest.json"):
        OrtBackend(tmp_path)
    with pytest.raises(BundleError, match="no fp8 graphs in this bundle"):
        OrtBackend(built, "fp8")


def test_impossible_requests(model, tmp_path):
    if not modelopt_available():
        with pytest.raises(QuantizeError, match="fp8 needs NVIDIA ModelOpt"):
            build_bundle(model, tmp_path / "x", ("fp32", "fp8"), engines="no", log=lambda m: None)
    with pytest.raises(BuildError, match="--engines yes needs an NVIDIA GPU"):
        build_bundle(model, tmp_path / "x", ("fp32",), engines="yes", log=lambda m: None)
    with pytest.raises(BuildError, match=r"block sizes \[16\] were not trained"):
        build_bundle(model, tmp_path / "x", ("fp32",), block_sizes=(16,), engines="no", log=lambda m: None)
    assert not (tmp_path / "x").exists()


def test_interrupted_build_leaves_nothing(model, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_mod, "add_precisions", boom)
    with pytest.raises(KeyboardInterrupt):
        build_bundle(model, tmp_path / "out", ("fp32", "int8"), engines="no", log=lambda m: None,
                     heldout=list(windows(TEXT, 64))[:1])
    assert list(tmp_path.iterdir()) == []


def test_fp8_with_modelopt(built, tmp_path):
    if not modelopt_available():
        pytest.skip("nvidia-modelopt is not installed (make test installs it; see the quant extra)")
    from fastblt.export.bundle import quantize_bundle

    copy = tmp_path / "b"
    shutil.copytree(built, copy)
    quantize_bundle(copy, ("fp8",), log=lambda m: None)
    manifest = Manifest.load(copy)
    assert manifest.precisions == ("fp32", "int8", "fp8")
    for key, entry in manifest.graphs.items():  # ModelOpt must not touch the FP32 graphs it reads
        manifest.graph_file(key, "fp32")
        if entry.is_standard:
            manifest.graph_file(key, "fp8")
        else:
            assert not manifest.has_file(key, "fp8")  # the fused layout is fp32/int8-dynamic only
    q = manifest.quality["fp8"]
    assert np.isfinite(q["heldout_bpb"])
    out = Generator(OrtBackend(copy, "fp8")).generate("def f(x):", max_new_bytes=8)
    assert len(out.bytes) > 0


def test_int8_dynamic_for_cpu(built, tmp_path):
    """int8-dynamic stores every weight MatMul as 8-bit blocks run as integer matmuls in ORT; a row's logits do
    not depend on the other rows of the call (per-row activation scales), so BLT-S stays byte-identical to AR;
    its quality is reported; it is never handed to TensorRT."""
    import onnx

    from fastblt.export.bundle import quantize_bundle

    copy = tmp_path / "b"
    shutil.copytree(built, copy)
    quantize_bundle(copy, ("int8-dynamic",), log=lambda m: None)
    manifest = Manifest.load(copy)
    assert manifest.precisions == ("fp32", "int8", "int8-dynamic")
    graph = onnx.load(str(manifest.graph_file("decoder_step", "int8-dynamic")))
    d = manifest.config.decoder
    n_cross = d.n_layers if manifest.config.decoder_cross_attn_all_layers else 1
    assert sum(n.op_type == "MatMulNBits" for n in graph.graph.node) == d.n_layers * 7 + n_cross * 4 + 1
    assert np.isfinite(manifest.quality["int8-dynamic"]["heldout_bpb"])  # default model: +0.004

    cfg, rng = manifest.config, np.random.default_rng(0)
    feeds = {"states": rng.standard_normal((1, 5, cfg.encoder.dim)).astype(np.float32),
             "positions": np.arange(5, dtype=np.int64)[None],
             "memory": rng.standard_normal((1, 5, cfg.cross_attn_k, cfg.encoder.dim)).astype(np.float32),
             "past_key": np.zeros((d.n_layers, 1, d.kv_heads, 0, d.head_dim), np.float32)}
    feeds["past_value"] = feeds["past_key"]
    ref = OrtBackend(copy, "fp32", layout="standard").run("decoder_step", dict(feeds))["logits"]
    dyn = OrtBackend(copy, "int8-dynamic", layout="standard")  # the fused layout runs decoder_step in place
    got = dyn.run("decoder_step", dict(feeds))["logits"]
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    first = dyn.run("decoder_step", {k: v[:, :1] if k in ("states", "positions", "memory") else v
                                     for k, v in feeds.items()})["logits"]
    np.testing.assert_allclose(first[0, 0], got[0, 0], atol=1e-5)  # row 0 alone = row 0 among five

    gen = Generator(OrtBackend(copy, "int8-dynamic"))
    for prompt in ("def f(x):", "class Point:\n"):
        ar = gen.generate(prompt, max_new_bytes=24, mode="ar").bytes
        assert gen.generate(prompt, max_new_bytes=24, mode="blts", draft_k=4).bytes == ar


def test_polygraphy_comparator_against_torch(built, model):
    from fastblt.export.polygraphy_check import PolygraphyError, polygraphy_check

    pytest.importorskip("polygraphy")
    report = polygraphy_check(built, model, prompts=[TEXT[:40]], limit=4, log=lambda m: None)
    assert {"patcher", "encoder", "global", "decoder_step"} <= set(report)
    for key, r in report.items():
        assert r["passed"] and r["iterations"] > 0, key
        assert all(err <= r["atol"][name] for name, err in r["onnxruntime-cpu"].items())
    torch.manual_seed(1)  # same config, other weights: Polygraphy must see every graph differ
    other = BltModel(model.config).eval()
    with pytest.raises(PolygraphyError, match=r"global:onnxruntime-cpu:memory max_abs="):
        polygraphy_check(built, other, prompts=[TEXT[:40]], limit=2, log=lambda m: None)
    with pytest.raises(PolygraphyError, match="config differs from the bundle"):
        polygraphy_check(built, BltModel(tiny_config(vocab_size=262, mask_id=260, pad_id=261)).eval(),
                         log=lambda m: None)
