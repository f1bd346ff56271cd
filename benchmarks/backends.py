"""The anchor benchmark: HF transformers `generate` vs fastblt (torch, ONNX Runtime FP32 and INT8) on the
same weights, same prompt (~1 KB of held-out code), greedy; bytes/s, ms per graph call, output equality.

The weights are a random-initialised `transformers.BltForCausalLM` with the default model's dimensions
(HF cannot run the shipped BLT-D: its vocabulary has MASK/PAD and its max_patch_length=8 patching differs
from HF's at the last position), saved with `save_pretrained` and loaded by fastblt through `load_model`.
HF runs its exact path (`use_cache=False`: one full forward per byte); its cached path is not equivalent.

    .venv/bin/python benchmarks/backends.py [--context 1024] [--new-bytes 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import RESULTS, heldout_text, machine, write

from fastblt.graphs import load_model
from fastblt.graphs.config import default_config
from fastblt.runtime.generator import Generator
from fastblt.runtime.host import encode


def hf_checkpoint(path, threshold_text: bytes):
    """A random HF BLT with the default model's sizes; θ set for ~4 bytes per patch on real text."""
    from transformers import BltConfig, BltForCausalLM

    d = default_config()

    def local(c, k=None):
        out = dict(hidden_size=c.dim, num_attention_heads=c.n_heads, num_hidden_layers=c.n_layers,
                   intermediate_size=c.hidden)
        if k is not None:
            out.update(cross_attn_k=k, hidden_size_global=d.global_transformer.dim)
        return out

    cfg = BltConfig(
        vocab_size=260, max_patch_length=None, local_attention_window_len=d.encoder.window,
        cross_attn_k=d.cross_attn_k, encoder_hash_byte_group_size=list(d.hash_sizes),
        encoder_hash_byte_group_vocab=d.hash_vocab, patching_threshold=0.0,
        patcher_config=dict(local(d.patcher), sliding_window=d.patcher.window),
        encoder_config=local(d.encoder, d.cross_attn_k), decoder_config=local(d.decoder, d.cross_attn_k),
        global_config=local(d.global_transformer))
    torch.manual_seed(0)
    model = BltForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.patcher.lm_head.weight.mul_(8.0)  # a random patcher is near-uniform; give it contrast
        ids = torch.tensor([encode(threshold_text[:2048])])
        ent = torch.sort(model.model.patcher(ids)[0][0, 1:]).values
        i = int(0.75 * len(ent))
        model.config.patching_threshold = float((ent[i] + ent[i - 1]) / 2)
    model.save_pretrained(path)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--new-bytes", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (HF and fastblt torch)")
    ap.add_argument("--ort-threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    text = heldout_text(args.context + 4096)
    prompt = text[: args.context]
    hf_dir, bundle_dir = RESULTS / "hf-random-blt", RESULTS / "bundle-hf-random-blt"
    hf = hf_checkpoint(hf_dir, text[args.context:])
    model = load_model(hf_dir)

    from fastblt.export.bundle import build_bundle
    from fastblt.runtime.backends.ort import OrtBackend
    from fastblt.runtime.backends.torch_ref import TorchBackend

    build_bundle(model, bundle_dir, ("fp32", "int8"), engines="no", log=lambda m: None)
    ids = torch.tensor([encode(prompt)])
    with torch.no_grad():  # HF: exact path, BLT specials suppressed as fastblt's sampler does
        hf.generate(ids, max_new_tokens=2, do_sample=False, use_cache=False, suppress_tokens=[0, 1, 3])
        t0 = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=args.new_bytes, do_sample=False, use_cache=False,
                          suppress_tokens=[0, 1, 3], pad_token_id=0)
        hf_s = time.perf_counter() - t0
    hf_bytes = bytes(i - 4 for i in out[0, ids.shape[1]:].tolist() if 4 <= i < 260)
    rows = [{"engine": "HF transformers generate (use_cache=False)", "bytes_per_s": len(hf_bytes) / hf_s,
             "new_bytes": len(hf_bytes), "identical_to_hf": True, "ms_per_call": {}}]
    runs = [("fastblt torch reference", TorchBackend(model)), ("fastblt ORT FP32", OrtBackend(bundle_dir, "fp32",
                                                                                                threads=args.ort_threads)),
            ("fastblt ORT INT8", OrtBackend(bundle_dir, "int8", threads=args.ort_threads))]
    fp32 = runs[1][1]
    modes = [{"mode": "ar"}] * len(runs) + [{"mode": "blts", "draft_k": 8}, {"mode": "blts", "draft_k": 8}]
    runs += [("fastblt torch reference, BLT-S k=8 (lossless)", runs[0][1]),
             ("fastblt ORT FP32, BLT-S k=8 (lossless)", fp32)]
    for (name, backend), mode in zip(runs, modes, strict=True):
        gen = Generator(backend)
        gen.generate(prompt, max_new_bytes=8, **mode)  # warm-up
        best = None
        for _ in range(3):
            r = gen.generate(prompt, max_new_bytes=args.new_bytes, **mode)
            best = r if best is None or r.bytes_per_s > best.bytes_per_s else best
        calls, ms = best.counters["decode_graph_calls"], best.counters["graph_ms"]
        rows.append({"engine": name, "mode": mode["mode"], "bytes_per_s": best.bytes_per_s,
                     "new_bytes": len(best.bytes), "acceptance": best.counters.get("acceptance"),
                     "identical_to_hf": best.bytes == hf_bytes,
                     "ms_per_call": {g: ms[g] / best.counters["graph_calls"][g] for g in calls}})
    base = rows[0]["bytes_per_s"]
    lines = [f"context {len(prompt)} bytes of held-out code, {args.new_bytes} new bytes, greedy, "
             f"torch threads {args.threads}, ORT threads {args.ort_threads}; model: random HF BLT with the default "
             "model's sizes; ms/call averages include the prefill call", "",
             "| engine | bytes/s | × HF | greedy output = HF | ms/call patcher · encoder · global · decoder_step |",
             "|---|---|---|---|---|"]
    for row in rows:
        ms = row["ms_per_call"]
        per = " · ".join(f"{ms[g]:.2f}" for g in ("patcher", "encoder", "global", "decoder_step") if g in ms) or "–"
        lines.append(f"| {row['engine']} | {row['bytes_per_s']:.1f} | {row['bytes_per_s'] / base:.1f} | "
                     f"{'yes' if row['identical_to_hf'] else 'NO'} | {per} |")
    write("backends", {"machine": machine(), "context": len(prompt), "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
