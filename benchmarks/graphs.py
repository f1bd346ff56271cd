"""`blt-bench graphs`: milliseconds per call of every graph at several context lengths, next to a physical
bound: the bytes one call must read (weights + the filled KV cache) over this machine's measured copy bandwidth.

Calls are timed inside real generations (a proxy around the backend records every call), after a warm-up
and after the prefill: AR decoding gives the one-byte patcher / encoder / decoder_step calls and the global
calls at patch ends; BLT-D (confidence α = 0.7) gives decoder_block per block size B, the encoder's B-row
scratch calls and the global calls that force the open patch closed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from fastblt.benchmarks.common import TimedBackend, fmt, heldout_prompts, progress, summary, table
from fastblt.graphs.params import param_counts
from fastblt.runtime.generator import Generator
from fastblt.runtime.unmask import UnmaskConfig

STACKS = {"patcher": "patcher", "encoder": "encoder", "global": "global_transformer", "decoder_step": "decoder",
          "decoder_block": "decoder"}


@dataclass(frozen=True)
class GraphsConfig:
    contexts: tuple[int, ...] = (128, 1024, 2048)
    calls: int = 200

    def to_dict(self) -> dict:
        return {"contexts": list(self.contexts), "calls": self.calls}


def copy_bandwidth(mib: int = 64, repeats: int = 7) -> float:
    """Bytes/s moved by a large numpy copy (read + write), best of `repeats`: this machine's memory bandwidth."""
    src = np.ones(mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def _collect(gen: Generator, timed: TimedBackend, prompt: bytes, mode: str, new_bytes: int, **options) -> list:
    """Graph calls of one generation after its first committed byte (the prefill excluded)."""
    seen = False
    for event in gen.stream(prompt, mode=mode, max_new_bytes=new_bytes, **options):
        if event["type"] == "text" and not seen:
            seen = True
            timed.records.clear()
    return list(timed.records)


def _label(graph: str, rows: int) -> str:
    if graph == "decoder_block":
        return f"decoder_block B={rows}"
    if graph == "global" or rows == 1:
        return graph
    return f"{graph} ({rows} rows)"


BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int8-dynamic": 1, "int4": 0.5}


def weight_bytes(gen, graph: str) -> int:
    """Bytes of weights one call reads: the graph's parameters (hash-embedding tables excluded: a call reads a few
    rows) × bytes per weight of the loaded precision (fp32 for the torch backend)."""
    params = param_counts(gen.config)[{"decoder_step": "decoder", "decoder_block": "decoder"}.get(graph, graph)]
    return int(params * BYTES_PER_WEIGHT.get(getattr(gen.backend, "precision", "fp32"), 4))


def cache_bytes(cfg, graph: str, positions: int, patches: int) -> int:
    """fp32 K and V entries a call reads: the filled local window, or every patch for the global cache."""
    sub = getattr(cfg, STACKS[graph])
    filled = patches if graph == "global" else min(positions, sub.window or positions)
    return 2 * sub.n_layers * sub.kv_heads * sub.head_dim * filled * 4


def run(targets, cfg: GraphsConfig, quiet: bool = False) -> dict:
    bandwidth = copy_bandwidth()
    section = {"config": cfg.to_dict(), "copy_bandwidth_gbs": bandwidth / 1e9, "targets": []}
    for target in targets:
        base = target.load()
        timed = TimedBackend(base.backend)
        gen = Generator(timed)
        sizes = set(gen.config.block_sizes or ())
        manifest = getattr(base.backend, "manifest", None)
        if manifest is not None:
            sizes &= set(manifest.block_sizes)
        blocks = sorted(sizes) if gen.config.diffusion_trained else []
        rows = []
        bar = progress(len(cfg.contexts) * (1 + len(blocks)), f"graphs {target.describe(base)}", quiet)
        for ctx in cfg.contexts:
            prompt = heldout_prompts(1, ctx)[0]
            _collect(gen, timed, prompt[:64], "ar", 8)  # warm-up
            records = _collect(gen, timed, prompt, "ar", cfg.calls)
            bar.update()
            n_global = sum(1 for g, _, _ in records if g == "global")
            bytes_per_patch = cfg.calls / max(n_global, 1)
            for b in blocks:
                unmask = UnmaskConfig("confidence", alpha=0.7)
                _collect(gen, timed, prompt[:64], "bltd", b, block_size=b, unmask=unmask)
                new = min(b * max(cfg.calls // 4, 2), 1024)  # ~2 steps per block: ~calls/2 decoder_block calls
                records += [(g, n, s) for g, n, s in _collect(gen, timed, prompt, "bltd", new, block_size=b,
                                                              unmask=unmask)
                            if g == "decoder_block" or (g == "encoder" and n == b)]
                bar.update()
            for label in dict.fromkeys(_label(g, n) for g, n, _ in records):
                calls = [(g, n, s) for g, n, s in records if _label(g, n) == label]
                graph, n = calls[0][:2]
                weights = weight_bytes(base, graph)
                kv = cache_bytes(gen.config, graph, ctx + cfg.calls // 2, int((ctx + cfg.calls // 2) / bytes_per_patch))
                rows.append({"graph": label, "context": ctx, "ms": summary(1e3 * s for _, _, s in calls),
                             "weight_bytes": weights, "cache_bytes": kv,
                             "bound_ms": 1e3 * (weights + kv) / bandwidth})
        bar.close()
        section["targets"].append({"target": target.describe(base), "layout": getattr(base.backend, "layout", None),
                                   "precision": target.precision, "rows": rows})
        base.close()
    bandwidth = max(bandwidth, copy_bandwidth())  # a busy machine lowers the copy rate: keep the best seen
    section["copy_bandwidth_gbs"] = bandwidth / 1e9
    for t in section["targets"]:
        for r in t["rows"]:
            r["bound_ms"] = 1e3 * (r["weight_bytes"] + r["cache_bytes"]) / bandwidth
    return section


def render(section: dict) -> str:
    out = [f"Milliseconds per call after warm-up and prefill ({section['config']['calls']} decode calls per context "
           "for the one-byte graphs); bound = (parameters × bytes per weight + filled fp32 KV cache) ÷ "
           f"measured copy bandwidth {section['copy_bandwidth_gbs']:.1f} GB/s. × bound = p50 ÷ bound: how far a "
           "call is from moving its bytes at memory speed (small graphs are bound by per-op dispatch, not memory)."]
    for t in section["targets"]:
        body = [[r["graph"], r["context"], r["ms"]["n"], fmt(r["ms"]["p50"], 3), fmt(r["ms"]["p90"], 3),
                 fmt(r["ms"]["p99"], 3), f"{(r['weight_bytes'] + r['cache_bytes']) / 2**20:.2f}",
                 fmt(r["bound_ms"], 3), fmt(r["ms"]["p50"] / r["bound_ms"], 1) if r["bound_ms"] else "–"]
                for r in t["rows"]]
        out += ["", f"**{t['target']}**:", "",
                table(["graph", "context B", "calls", "p50 ms", "p90 ms", "p99 ms", "MiB read", "bound ms",
                       "× bound"], body)]
    return "\n".join(out)


def plots(section: dict, save, plt) -> list[tuple[str, str]]:
    targets = section["targets"]
    fig, axes = plt.subplots(len(targets), 1, figsize=(9, 3.6 * len(targets)), squeeze=False)
    for ax, t in zip(axes[:, 0], targets, strict=True):
        ctxs = sorted({r["context"] for r in t["rows"]})
        labels = list(dict.fromkeys(r["graph"] for r in t["rows"]))
        width = 0.8 / len(ctxs)
        for i, c in enumerate(ctxs):
            grid = {r["graph"]: r for r in t["rows"] if r["context"] == c}
            xs = [j + i * width for j, lab in enumerate(labels) if lab in grid]
            rs = [grid[lab] for lab in labels if lab in grid]
            p50 = [r["ms"]["p50"] for r in rs]
            err = [[0] * len(rs), [r["ms"]["p99"] - r["ms"]["p50"] for r in rs]]
            ax.bar(xs, p50, width, yerr=err, color=f"C{i}", label=f"p50 @ {c} B (bar to p99)", capsize=2)
            ax.scatter(xs, [r["bound_ms"] for r in rs], marker="_", s=200, color="black",
                       label="memory bound" if i == 0 else None, zorder=3)
        ax.set_xticks([j + width * (len(ctxs) - 1) / 2 for j in range(len(labels))], labels, rotation=25,
                      ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms per call")
        ax.set_title(t["target"], fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "graph_ms_vs_bound.png")
    return [("Per-graph ms per call against the memory bound", "graph_ms_vs_bound.png")]
