"""`blt-bench anchor`: HF transformers `BltForCausalLM.generate` against fastblt (torch reference; ONNX Runtime
per precision, standard and fused CPU layouts; AR and the lossless BLT-S) on the same weights and prompt,
greedy: bytes/s, decode-only ms per graph call, and whether the greedy bytes equal HF's.

Weights: `trained` writes the shipped model in HF format (`save_hf` without its MASK/PAD rows and without
max_patch_length, which HF applies differently at the last row), so stock HF runs exactly the model fastblt
runs; `random` is a random `BltForCausalLM` of the default model's sizes; or any HF-format BLT directory.
Both sides load the same HF directory. HF runs its exact path (`use_cache=False`: one full forward per byte).
A shared machine drifts, so the fused FP32 rows are measured again in interleaved rounds, each against its
own fresh HF run, and the ratio is reported per round.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from fastblt.benchmarks.common import BenchError, fmt, heldout_text, progress, summary, table
from fastblt.graphs.atomic import atomic_file


@dataclass(frozen=True)
class AnchorConfig:
    weights: str = "trained"  # trained | random | an HF-format directory
    context: int = 1024
    new_bytes: int = 64
    repeats: int = 5
    threads: int = 2
    draft_k: tuple[int, ...] = (8, 16)
    rounds: int = 3
    precisions: tuple[str, ...] = ("fp32", "int8", "int8-dynamic")
    fused: bool = True  # also export and time the fused ORT CPU layout

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def random_hf(path: Path, threshold_text: bytes):
    """A random HF BLT with the default model's sizes; θ set for ~4 bytes per patch on real text."""
    import torch
    from transformers import BltConfig, BltForCausalLM

    from fastblt.graphs.config import default_config
    from fastblt.runtime.host import encode

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


def _bundle(model, hf_dir: Path, out: Path, precisions: tuple[str, ...], fused: bool, build) -> Path:
    """The HF weights' bundle, rebuilt only when the weights, config or precisions differ from the last build."""
    h = hashlib.sha256(repr((precisions, fused)).encode())
    for name in ("config.json", "model.safetensors"):
        if (hf_dir / name).is_file():
            h.update((hf_dir / name).read_bytes())
    stamp = out / "source.sha256"
    if stamp.is_file() and stamp.read_text() == h.hexdigest() and (out / "manifest.json").is_file():
        return out
    build(model, out, precisions, engines="no", log=lambda m: None, fused=fused)
    atomic_file(stamp, h.hexdigest())
    return out


def run(cfg: AnchorConfig, work: Path, quiet: bool = False) -> dict:
    try:
        import torch
        from transformers import BltForCausalLM
    except ImportError:
        raise ImportError("blt-bench anchor needs torch and transformers: pip install 'fastblt[dev]'") from None
    from fastblt.export.bundle import build_bundle
    from fastblt.graphs import default_model_path, load_model
    from fastblt.graphs.hf_export import save_hf
    from fastblt.runtime.backends.ort import OrtBackend
    from fastblt.runtime.backends.torch_ref import TorchBackend
    from fastblt.runtime.generator import Generator
    from fastblt.runtime.host import encode
    from fastblt.runtime.manifest import BundleError

    torch.set_num_threads(cfg.threads)
    text = heldout_text(cfg.context + 4096)
    prompt = text[: cfg.context]
    hf_dir = work / "hf"
    if cfg.weights == "random":
        random_hf(hf_dir, text[cfg.context:])
    elif cfg.weights == "trained":
        save_hf(load_model(default_model_path()), hf_dir, drop_special_rows=True, max_patch_length=None)
    elif (Path(cfg.weights) / "config.json").is_file():
        hf_dir = Path(cfg.weights)
    else:
        raise BenchError(f"--weights {cfg.weights!r}: give trained, random, or an HF-format BLT directory")
    hf = BltForCausalLM.from_pretrained(hf_dir).eval()
    model = load_model(hf_dir)
    bundle = _bundle(model, hf_dir, work / "bundle", cfg.precisions, cfg.fused, build_bundle)
    ids = torch.tensor([encode(prompt)])

    def hf_run() -> tuple[float, bytes]:
        with torch.no_grad():  # HF's exact path; BLT specials suppressed as fastblt's sampler does
            t0 = time.perf_counter()
            out = hf.generate(ids, max_new_tokens=cfg.new_bytes, do_sample=False, use_cache=False,
                              suppress_tokens=[0, 1, 3], pad_token_id=0)
            return time.perf_counter() - t0, bytes(i - 4 for i in out[0, ids.shape[1]:].tolist() if 4 <= i < 260)

    with torch.no_grad():
        hf.generate(ids, max_new_tokens=2, do_sample=False, use_cache=False, suppress_tokens=[0, 1, 3],
                    pad_token_id=0)
    (s1, hf_bytes), (s2, _) = hf_run(), hf_run()
    rows = [{"engine": "HF transformers generate (use_cache=False)", "mode": "ar",
             "bytes_per_s": len(hf_bytes) / min(s1, s2), "new_bytes": len(hf_bytes), "identical_to_hf": True}]
    engines = [("torch reference", TorchBackend(model))]
    for precision in cfg.precisions:
        for layout in ("standard", "fused"):
            try:
                engines.append((f"ORT {precision}, {layout} graphs", OrtBackend(bundle, precision, layout=layout)))
            except BundleError:
                continue  # no fused graphs for this precision (Q/DQ)
    modes = [("AR", {"mode": "ar"})] + [(f"BLT-S k={k}", {"mode": "blts", "draft_k": k}) for k in cfg.draft_k]

    def median_run(gen, mode):
        results = sorted((gen.generate(prompt, max_new_bytes=cfg.new_bytes, **mode) for _ in range(cfg.repeats)),
                         key=lambda r: r.bytes_per_s)
        return results, results[len(results) // 2]

    bar = progress(len(engines) * len(modes) + cfg.rounds * (1 + len(modes)), "anchor", quiet)
    fused = None
    for name, backend in engines:
        gen = Generator(backend)
        if name == "ORT fp32, fused graphs" or (fused is None and name == "ORT fp32, standard graphs"):
            fused = gen
        for label, mode in modes:
            gen.generate(prompt, max_new_bytes=8, **mode)  # warm-up
            results, med = median_run(gen, mode)
            calls, ms = med.counters["decode_graph_calls"], med.counters["decode_graph_ms"]
            rows.append({"engine": f"fastblt {name}", "mode": label, "bytes_per_s": med.bytes_per_s,
                         "bytes_per_s_all": [r.bytes_per_s for r in results], "new_bytes": len(med.bytes),
                         "acceptance": med.counters.get("acceptance"),
                         "identical_to_hf": all(r.bytes == hf_bytes for r in results),
                         "ms_per_call": {g: ms[g] / calls[g] for g in calls if calls[g]}})
            bar.update()
    rounds = []
    for _ in range(cfg.rounds):
        seconds, same = hf_run()
        row = {"hf_bytes_per_s": len(hf_bytes) / seconds, "hf_identical": same == hf_bytes}
        bar.update()
        for label, mode in modes:
            results, med = median_run(fused, mode)
            row[label] = {"bytes_per_s": med.bytes_per_s, "identical": all(r.bytes == hf_bytes for r in results)}
            bar.update()
        rounds.append(row)
    bar.close()
    ratios = {label: summary(r[label]["bytes_per_s"] / r["hf_bytes_per_s"] for r in rounds) for label, _ in modes}
    return {"config": cfg.to_dict(), "prompt_bytes": len(prompt), "hf_new_bytes": len(hf_bytes), "rows": rows,
            "rounds": rounds, "round_engine": f"fastblt {fused.backend.name} {getattr(fused.backend, 'layout', '')}",
            "ratios": ratios}


def render(section: dict) -> str:
    cfg = section["config"]
    base = section["rows"][0]["bytes_per_s"]
    out = [f"Weights: {cfg['weights']} (one HF-format directory for both sides); {section['prompt_bytes']} bytes of "
           f"held-out code, {cfg['new_bytes']} new bytes, greedy; torch threads {cfg['threads']}; HF best of 2 runs, "
           f"fastblt rows median of {cfg['repeats']}; ms/call decode-only.", ""]
    body = []
    for r in section["rows"]:
        ms = r.get("ms_per_call") or {}
        per = " · ".join(f"{ms[g]:.3f}" for g in ("patcher", "encoder", "global", "decoder_step") if g in ms) or "–"
        body.append([r["engine"], r["mode"].upper() if r["mode"] == "ar" else r["mode"], fmt(r["bytes_per_s"]),
                     fmt(r["bytes_per_s"] / base), "yes" if r["identical_to_hf"] else "NO",
                     fmt(r.get("acceptance"), 2), per])
    out.append(table(["engine", "mode", "bytes/s", "× HF", "greedy output = HF", "acceptance",
                      "ms/call patcher · encoder · global · decoder_step"], body))
    labels = list(section["ratios"])
    def cell(r, lab):
        return f"{fmt(r[lab]['bytes_per_s'])} ({fmt(r[lab]['bytes_per_s'] / r['hf_bytes_per_s'])})"

    body = [[i, fmt(r["hf_bytes_per_s"])] + [cell(r, lab) for lab in labels]
            + ["yes" if r["hf_identical"] and all(r[lab]["identical"] for lab in labels) else "NO"]
            for i, r in enumerate(section["rounds"], 1)]
    out += ["", f"Interleaved rounds ({section['round_engine']}; HF once, then each mode's median of "
            f"{cfg['repeats']}):", "", table(["round", "HF bytes/s"] + [f"{lab} bytes/s (× HF)" for lab in labels]
                                             + ["greedy = HF"], body), ""]
    out += [f"{lab} ÷ HF over the rounds: median {fmt(s['median'])}×, min {fmt(s['min'])}×, max {fmt(s['max'])}×"
            for lab, s in section["ratios"].items() if s["n"]]
    return "\n".join(out)
