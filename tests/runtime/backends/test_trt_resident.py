"""The TensorRT backend's device-resident KV caches, on CPU machines: stand-in tensorrt/cuda modules whose GPU is
numpy memory (tests/trt_helpers.py) and whose engines compute a toy function of every cache entry they see.

A decode step moves the same bytes across the bus at any cache length; every call of every mode sees exactly the
inputs the copy-everything path gives it (caches compared slot by slot after compaction, rollback, discarded drafts
and diffusion blocks); sessions sharing a backend keep separate caches; device memory goes with the KVCache and
with the backend. The last test needs a real GPU (skipped with the probe's reason here): nothing in this file has
been verified on a GPU."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import importlib
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from trt_helpers import DataType, FakeEngine, fake_cudart, fake_tensorrt, gpu_or_skip, install

from fastblt.graphs.config import tiny_config
from fastblt.graphs.constants import graph_key, split_graph_key
from fastblt.graphs.spec import graph_specs
from fastblt.runtime import host, trt_device
from fastblt.runtime.generator import Generator
from fastblt.runtime.manifest import BundleError, write_manifest
from fastblt.runtime.session import Session

MODULE = "fastblt.runtime.backends.trt"
# a window of 100 with compaction every 64 appends: the kept slots overlap their new place (the staged move)
CFG = tiny_config(window=100, vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8))
TEXT = b"def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n" * 6
HALF_CACHE = ("past_key", "past_value", "new_key", "new_value", "block_key", "block_value")


def _bundle(root, cfg=CFG):
    """A manifest with every standard graph (decoder_block per block size), one fp32 engine each (its plan bytes
    name its graph key) and a random hash table, so hash_embeds differ between bytes."""
    root.mkdir(parents=True)
    (root / "engines").mkdir()
    rows = cfg.n_hash_tables * cfg.hash_vocab
    table = np.random.default_rng(0).standard_normal((rows, cfg.encoder.dim)).astype(np.float32).tobytes()
    (root / "table.bin").write_bytes(table)
    keys = ["patcher", "encoder", "global", "decoder_step", *(graph_key("decoder_block", b) for b in cfg.block_sizes)]
    graphs, engines = {}, []
    for key in keys:
        graph, block = split_graph_key(key)
        onnx_sha = hashlib.sha256(key.encode()).hexdigest()
        graphs[key] = {"graph": graph, "block_size": block,
                       "files": {"fp32": {"path": f"fp32/{key}.onnx", "sha256": onnx_sha}}}
        plan = f"plan:{key}".encode()
        (root / "engines" / f"{key}.plan").write_bytes(plan)
        engines.append({"graph_key": key, "precision": "fp32", "path": f"engines/{key}.plan",
                        "sha256": hashlib.sha256(plan).hexdigest(), "gpu_name": "Fake GPU",
                        "compute_capability": "8.9", "trt_version": "10.3.0", "onnx_sha256": onnx_sha})
    write_manifest(root, {
        "hash_table": {"rows": rows, "dim": cfg.encoder.dim, "dtype": "float32",
                       "data": {"path": "table.bin", "sha256": hashlib.sha256(table).hexdigest(),
                                "bytes": len(table)}},
        "model": cfg.to_dict(), "precisions": ["fp32"], "block_sizes": list(cfg.block_sizes),
        "created": "2026-01-01T00:00:00+00:00", "opset": 18, "special_ids": {}, "patching": {}, "validation": {},
        "quantization": {}, "tools": {}, "quality": {}, "graphs": graphs, "engines": engines,
    })
    return root


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """(backend module, fake cudart, make): `make(resident=True, dtypes=None)` opens a TensorRTBackend on the
    bundle; every engine is a computing FakeEngine on the fake GPU, `dtypes` overriding its tensor types."""
    monkeypatch.setattr(trt_device, "_LOGGER", None)
    cudart = fake_cudart()
    state = {"dtypes": None}
    specs = graph_specs(CFG)

    def deserialize(data):
        graph, _ = split_graph_key(bytes(data).decode().removeprefix("plan:"))
        dtypes = {n: t for n, t in (state["dtypes"] or {}).items()
                  if n in specs[graph].input_names or n in specs[graph].output_names}
        return FakeEngine(specs[graph], device=cudart.device, dtypes=dtypes)

    install(monkeypatch, fake_tensorrt(runtime=lambda logger: SimpleNamespace(deserialize_cuda_engine=deserialize)),
            cudart)
    sys.modules.pop(MODULE, None)
    module = importlib.import_module(MODULE)
    bundle = _bundle(tmp_path / "bundle")

    def make(resident: bool = True, dtypes=None):
        state["dtypes"] = dtypes
        backend = module.TensorRTBackend(bundle, resident=resident)
        if not resident:
            backend.fused_block_rows = frozenset()  # the calls the resident backend gets, for a call-by-call match
        return backend

    yield module, cudart, make
    sys.modules.pop(MODULE, None)


def _log(backend) -> dict[str, list]:
    return {key: e.engine.log for key, e in backend._engines.items()}


def _assert_same_calls(resident, copying) -> int:
    """Every engine got the same inputs (the cached window included) and gave the same outputs, call by call."""
    calls = 0
    for key, log in _log(copying).items():
        got = _log(resident)[key]
        assert len(got) == len(log), key
        for i, ((inputs, outputs), (want_in, want_out)) in enumerate(zip(got, log, strict=True)):
            for name in want_in:
                np.testing.assert_array_equal(inputs[name], want_in[name], err_msg=f"{key} call {i} input {name}")
            for name in want_out:
                np.testing.assert_array_equal(outputs[name], want_out[name], err_msg=f"{key} call {i} {name}")
        calls += len(log)
    return calls


def _device_entries(backend, cudart, cache) -> tuple[np.ndarray, np.ndarray]:
    """What the fake GPU holds for `cache`'s entries, as [n_layers, 1, h_kv, length, d] keys and values (the
    device copy learns of a truncation at its next call, so it may hold more)."""
    device = backend._resident[cache]
    assert device.start == cache.start and device.length >= cache.length
    n_layers, heads, d = device.geometry
    shape = (n_layers, 1, heads, device.capacity, d)
    return tuple(cudart.device.array(ptr, shape, device.dtype)[:, :, :, :cache.length] for ptr in device.ptrs)


def _assert_same_caches(resident_backend, cudart, resident: Session, copying: Session) -> None:
    for name, cache in copying.caches.items():
        mine = resident.caches[name]
        assert (mine.start, mine.length) == (cache.start, cache.length), name
        if cache.length == 0 and mine not in resident_backend._resident:
            continue
        keys, values = _device_entries(resident_backend, cudart, mine)
        np.testing.assert_array_equal(keys, cache.k[:, :, :, :cache.length], err_msg=f"{name} keys")
        np.testing.assert_array_equal(values, cache.v[:, :, :, :cache.length], err_msg=f"{name} values")


# ---- (a) bytes per decode step ---------------------------------------------------------------------------------

def _step_bytes(backend, cudart, prompt_len: int) -> dict:
    session = Session(backend)
    session.commit(host.encode(TEXT[:prompt_len - 2]))
    session.commit([host.OFFSET + ord("y")])  # compacts a long prefill (a device move, every 64 appends)
    backend.transfer.reset()
    cudart.device.copied = dict.fromkeys(cudart.device.copied, 0)
    session.commit([host.OFFSET + ord("x")])
    measured = {kind.name: n for kind, n in cudart.device.copied.items()}
    total = backend.transfer.total
    # the backend's own counter equals what the (stand-in) GPU saw
    assert (total.h2d, total.d2h, total.d2d) == (measured["cudaMemcpyHostToDevice"],
                                                 measured["cudaMemcpyDeviceToHost"],
                                                 measured["cudaMemcpyDeviceToDevice"])
    return {g: dataclasses.replace(backend.transfer.graphs[g]) for g in ("patcher", "encoder", "decoder_step")}


def test_a_decode_step_moves_bytes_in_proportion_to_its_rows_not_the_cache(stand_in):
    _, cudart, make = stand_in
    d, k, v = CFG.encoder.dim, CFG.cross_attn_k, CFG.vocab_size
    with make() as backend:
        short, long = _step_bytes(backend, cudart, 10), _step_bytes(backend, cudart, 400)
    # ids, positions (int64), hash_embeds, states, memory (float32) in; entropies, states, logits out
    want = {"patcher": (16, 4), "encoder": (16 + 4 * d, 4 * d), "decoder_step": (4 * d + 8 + 4 * k * d, 4 * v)}
    for graph, (h2d, d2h) in want.items():
        assert (short[graph].h2d, short[graph].d2h) == (h2d, d2h), graph
        assert (long[graph].h2d, long[graph].d2h) == (h2d, d2h), graph
    # the visible window is gathered on the device: its bytes follow the window, and never cross the bus
    entry = 2 * CFG.decoder.n_layers * CFG.decoder.kv_heads * CFG.decoder.head_dim * 4
    assert short["decoder_step"].d2d == (10 + 1) * entry  # 10 cached rows gathered, 1 new row appended
    assert long["decoder_step"].d2d == (CFG.decoder.window - 1 + 1) * entry

    with make(resident=False) as copying:  # the copy-everything path: the whole window both ways, every step
        short, long = _step_bytes(copying, cudart, 10), _step_bytes(copying, cudart, 400)
    assert long["decoder_step"].h2d - short["decoder_step"].h2d == (CFG.decoder.window - 1 - 10) * entry
    assert short["decoder_step"].d2h == 4 * v + entry and long["decoder_step"].d2d == 0  # the new K/V come back


# ---- (b) the same results as the copy-everything path -----------------------------------------------------------

@pytest.mark.parametrize("case", [
    dict(mode="ar"),
    dict(mode="blts", draft_k=4),
    dict(mode="bltd", block_size=4),
    dict(mode="bltd", block_size=8, block_start="forced"),
    dict(mode="bltdv", block_size=4),
], ids=["ar", "blts-k4", "bltd-B4", "bltd-B8-forced", "bltdv-B4"])
def test_every_mode_gives_every_engine_the_copying_paths_inputs(stand_in, case):
    """Past the window (compactions whose kept slots overlap their new place), through rejected drafts, rollbacks
    and diffusion blocks: the cached window each engine receives from the device equals the host cache's, call
    by call, so every output and the generated bytes are identical."""
    _, _, make = stand_in
    with make() as resident, make(resident=False) as copying:
        got = Generator(resident).generate(TEXT[:300], max_new_bytes=120, **case)
        want = Generator(copying).generate(TEXT[:300], max_new_bytes=120, **case)
        untimed = lambda counters: {k: v for k, v in counters.items() if not k.endswith("_ms")}  # noqa: E731
        assert got.bytes == want.bytes and untimed(got.counters) == untimed(want.counters)
        assert _assert_same_calls(resident, copying) > 100
        assert resident._scratch.capacity > 0  # a compaction moved overlapping slots through the scratch buffer
        assert resident.transfer.total.h2d < copying.transfer.total.h2d / 5


def _script(session: Session):
    """Every Session primitive past the window: prefill in two parts (the device copies grow with entries in
    them), drafts partly shared by the commit, discarded drafts, a forced-closure latent, diffusion blocks at
    the open patch's start, a deferred commit, rollbacks. Yields the results so far after each step."""
    out = [session.commit(host.encode(TEXT[:19])), session.commit(host.encode(TEXT[19:299], bos=False))]
    for step in range(40):
        for b in (10, 20, 30, 40):
            out.append(session.draft_step(b + step % 3))
        if step % 4 == 3:
            session.discard_drafts()
        out.append(session.commit([10 + step % 3, 20 + step % 3, 99]))  # the first two drafts are kept
        if step % 5 == 4:
            session.rollback(session.length - 3)
            out.append(session.logits())
        if step % 7 == 6:
            out.append(session.commit([50, 51], open_latent=True))
            out.append(session.last_latent())
            start, memory = session.block_anchor(4)
            states = session.block_states(session.ids[start:] + [CFG.mask_id] * (4 - session.length + start), start)
            out.append(session.block_logits(states, np.repeat(memory[None], 4, 0), True, start))
            session.commit([60, 61, 62], defer_decoder=True)
            states = session.block_states([CFG.mask_id] * 4)
            out.append(session.block_logits(states, np.repeat(session.last_latent()[None], 4, 0), False))
        yield out


def test_device_caches_equal_the_host_caches_slot_by_slot(stand_in):
    _, cudart, make = stand_in
    with make() as resident, make(resident=False) as copying:
        mine, theirs = Session(resident, slack=8), Session(copying, slack=8)
        got, want = [], []
        for got, want in zip(_script(mine), _script(theirs), strict=True):  # noqa: B007 - the results, at the end
            _assert_same_caches(resident, cudart, mine, theirs)
        assert len(got) == len(want) > 200
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        assert mine.caches["decoder"].start > 0 and resident._scratch.capacity > 0  # compacted, moves staged
        _assert_same_calls(resident, copying)


def test_a_wrong_device_cache_is_seen(stand_in):
    """The check above can fail: one changed value in the device cache changes the next output."""
    _, cudart, make = stand_in
    with make() as resident, make(resident=False) as copying:
        mine, theirs = Session(resident), Session(copying)
        mine.commit(host.encode(TEXT[:50]))
        theirs.commit(host.encode(TEXT[:50]))
        keys, _ = _device_entries(resident, cudart, mine.caches["decoder"])
        keys[1, 0, 2, 30, 5] += 0.5
        assert not np.array_equal(mine.commit([70]), theirs.commit([70]))


def test_host_appends_to_a_device_cache_are_refused(stand_in):
    _, _, make = stand_in
    with make() as backend:
        assert backend.in_place_graphs == {"patcher", "encoder", "global", "decoder_step", "decoder_block"}
        assert backend.fused_block_rows == frozenset()  # the session never appends BLT-D's fused rows itself
        session = Session(backend)
        session.commit(host.encode(TEXT[:20]))
        cache = session.caches["decoder"]
        cache.append(cache.k[:, :, :, :1].copy(), cache.v[:, :, :, :1].copy())
        with pytest.raises(RuntimeError, match=r"positions 21\.\.21 that were appended on the host.*run_in_place"):
            session.commit([70])


def test_the_copying_backend_runs_nothing_in_place(stand_in):
    _, _, make = stand_in
    with make(resident=False) as backend:
        assert backend.in_place_graphs == frozenset()
        with pytest.raises(ValueError, match=r"runs \[\] in place, not 'patcher' \(opened with resident=False"):
            backend.run_in_place("patcher", {}, Session(backend).caches["patcher"])


# ---- (c) sessions on one backend ---------------------------------------------------------------------------------

def _greedy(session: Session, prompt: bytes, steps: int):
    logits = session.commit(host.encode(prompt))[-1]
    for _ in range(steps):
        logits = session.commit([int(np.argmax(logits))])[-1]
        yield logits


def test_two_sessions_on_one_backend_keep_separate_caches(stand_in):
    _, _, make = stand_in
    with make() as shared, make() as alone:
        a, b = Session(shared), Session(shared)
        pairs = zip(_greedy(a, TEXT[:120], 150), _greedy(b, TEXT[40:90], 150), strict=True)
        got = [(x.copy(), y.copy()) for x, y in pairs]  # interleaved: one step of a, one of b
        want_a, want_b = list(_greedy(Session(alone), TEXT[:120], 150)), list(_greedy(Session(alone), TEXT[40:90], 150))
        for (x, y), wa, wb in zip(got, want_a, want_b, strict=True):
            np.testing.assert_array_equal(x, wa)
            np.testing.assert_array_equal(y, wb)
        mine = {id(shared._resident[c]) for s in (a, b) for c in s.caches.values()}
        assert len(mine) == 8  # one device cache per KVCache: 4 per session


def test_sessions_on_several_threads_share_one_backend(stand_in):
    """Calls from several threads are serialized; each session's cache stays its own."""
    _, _, make = stand_in
    prompts = [TEXT[i:i + 40 + 10 * i] for i in range(4)]
    with make() as shared, make() as alone:
        want = [list(_greedy(Session(alone), p, 40)) for p in prompts]
        got, errors = [None] * 4, []

        def worker(i):
            try:
                got[i] = [x.copy() for x in _greedy(Session(shared), prompts[i], 40)]
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        for mine, theirs in zip(got, want, strict=True):
            for x, y in zip(mine, theirs, strict=True):
                np.testing.assert_array_equal(x, y)


# ---- (d) device memory -------------------------------------------------------------------------------------------

def test_device_memory_goes_with_the_cache_and_the_backend(stand_in):
    _, cudart, make = stand_in
    backend = make()
    session = Session(backend)
    session.commit(host.encode(TEXT[:200]))
    caches = sum(d.nbytes for d in backend._resident.values())
    assert caches > 0 and len(backend._resident) == 4
    live = cudart.device.live_bytes
    del session
    gc.collect()
    assert len(backend._resident) == 0 and cudart.device.live_bytes == live - caches
    Session(backend).commit(host.encode(TEXT[:30]))  # a session left open when the backend closes
    keep = Session(backend)
    keep.commit(host.encode(TEXT[:30]))
    backend.close()
    assert cudart.device.live_bytes == 0 and cudart.device.blocks == {}
    frees = cudart.device.frees
    del keep
    gc.collect()
    assert cudart.device.frees == frees  # freed once, by close, not again when the KVCache goes
    with pytest.raises(RuntimeError, match="this TensorRT backend is closed"):
        backend.run_in_place("patcher", {"ids": np.zeros((1, 1), np.int64),
                                         "positions": np.zeros((1, 1), np.int64)}, Session.__new__(Session))


# ---- half-precision engines ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "dtype"), [(DataType.HALF, "float16"), (DataType.BF16, "bfloat16")])
def test_half_engines_keep_half_caches_on_the_device(stand_in, kind, dtype):
    """fp16/bf16 engines (KV caches in half, as the bundle's half graphs carry them): the device cache is kept in
    the engine's dtype, at half the bytes, with the same results as the copying path."""
    _, cudart, make = stand_in
    half = dict.fromkeys(HALF_CACHE, kind)
    with make(dtypes=half) as resident, make(resident=False, dtypes=half) as copying:
        assert resident.cache_dtype == copying.cache_dtype == dtype
        got = Generator(resident).generate(TEXT[:200], max_new_bytes=40, mode="blts", draft_k=4)
        want = Generator(copying).generate(TEXT[:200], max_new_bytes=40, mode="blts", draft_k=4)
        assert got.bytes == want.bytes
        _assert_same_calls(resident, copying)
        session = Session(resident)
        session.commit(host.encode(TEXT[:20]))
        device = resident._resident[session.caches["decoder"]]
        assert device.dtype == np.dtype(kind.value if kind is DataType.HALF else _bf16())
        assert device.entry == 2 * CFG.decoder.head_dim  # bytes of one entry in one (layer, head) row


def _bf16():
    import ml_dtypes

    return ml_dtypes.bfloat16


def test_engines_that_disagree_on_the_cache_dtype_are_refused(stand_in):
    _, _, make = stand_in
    with pytest.raises(BundleError, match=r"KV-cache tensors differ in dtype.*past_key.*float16.*new_key.*float32"):
        make(dtypes={"past_key": DataType.HALF, "past_value": DataType.HALF})


def test_bf16_engines_without_ml_dtypes_name_the_package(stand_in, monkeypatch):
    _, _, make = stand_in
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(BundleError, match=r"tensor 'past_key' is bfloat16; .*pip install ml_dtypes"):
        make(dtypes=dict.fromkeys(HALF_CACHE, DataType.BF16))


# ---- GPU (skipped with the probe's reason without one) --------------------------------------------------------

@pytest.mark.gpu
def test_on_a_gpu_resident_caches_give_the_copying_paths_bytes(tmp_path):
    """Not verified on a GPU: written for one. Real engines of a tiny random model, resident against copying
    (fused rows off on both, so they make the same calls), every mode, and a decode step's bus bytes at two
    cache lengths."""
    gpu_or_skip()
    pytest.importorskip("onnxruntime")
    import torch

    from fastblt.export.bundle import build_bundle
    from fastblt.graphs.model import BltModel
    from fastblt.graphs.training.data import windows

    sys.modules.pop(MODULE, None)
    from fastblt.runtime.backends.trt import TensorRTBackend

    torch.manual_seed(0)
    model = BltModel(tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8))).eval()
    heldout = list(windows(TEXT * 2, 96))[:3]
    bundle = build_bundle(model, tmp_path / "tiny", ("fp32",), engines="yes", log=lambda m: None, heldout=heldout)
    with TensorRTBackend(bundle) as resident, TensorRTBackend(bundle, resident=False) as copying:
        copying.fused_block_rows = frozenset()
        for case in (dict(mode="ar"), dict(mode="blts", draft_k=4), dict(mode="bltd", block_size=4),
                     dict(mode="bltdv", block_size=8)):
            got = Generator(resident).generate(TEXT[:200], max_new_bytes=64, **case)
            want = Generator(copying).generate(TEXT[:200], max_new_bytes=64, **case)
            assert got.bytes == want.bytes, case
        steps = []
        for prompt in (10, 300):
            session = Session(resident)
            session.commit(host.encode(TEXT[:prompt - 1]))
            resident.transfer.reset()
            session.commit([host.OFFSET + ord("x")])
            steps.append({g: (t.h2d, t.d2h) for g, t in resident.transfer.graphs.items() if g != "global"})
        assert steps[0] == steps[1]
