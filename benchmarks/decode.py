"""`blt-bench decode`: end-to-end generation speed and the paper's counters, per mode setting and context.

Prompts are cut from held-out files (several files, several context lengths); every round runs each
(context, prompt) in all mode settings in a shuffled order, so machine noise hits the settings alike.
Rows give medians over prompts × repeats with min–max; per-byte latency pools every byte of every run.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass

from fastblt.benchmarks.common import (
    Setting,
    fmt,
    heldout_prompts,
    progress,
    spread,
    summary,
    table,
    usable,
)

DEFAULT_SETTINGS = ("ar,blts/k=4,blts/k=8,blts/k=16,bltd/B=4/alpha=0.7,bltd/B=8/alpha=0.7,bltd/B=16/alpha=0.7,"
                    "bltd/B=8/gamma=1.0,bltdv/B=4/one_step,bltdv/B=8/one_step,bltdv/B=16/one_step,bltdv/B=8/alpha=0.3")


@dataclass(frozen=True)
class DecodeConfig:
    settings: tuple[Setting, ...]
    contexts: tuple[int, ...] = (128, 1024, 2048)
    prompts: int = 3
    repeats: int = 2
    new_bytes: int = 128
    seed: int = 0

    def to_dict(self) -> dict:
        return {"settings": [s.spec for s in self.settings], "contexts": list(self.contexts), "prompts": self.prompts,
                "repeats": self.repeats, "new_bytes": self.new_bytes, "seed": self.seed}


def measure(gen, prompt: bytes, setting: Setting, new_bytes: int) -> tuple[dict, list[float]]:
    """One greedy generation through `stream`: timings, counters, and the per-byte gaps (seconds)."""
    t0 = time.perf_counter()
    first, last, gaps, result = None, None, [], None
    for event in gen.stream(prompt, mode=setting.mode, max_new_bytes=new_bytes, **setting.options):
        now = time.perf_counter()
        if event["type"] == "text" and event["bytes"]:
            n = len(event["bytes"])
            if first is None:
                first = now - t0
            else:
                gaps += [(now - last) / n] * n
            last = now
        elif event["type"] == "done":
            result = event["result"]
    c = result.counters
    actual = c.get("actual", {})
    blocks = c.get("steps_per_block") or []
    run = {"setting": setting.spec, "new_bytes": len(result.bytes), "seconds": result.seconds,
           "prefill_s": result.prefill_seconds, "ttfb_s": first, "bytes_per_s": result.bytes_per_s,
           "n_enc": c.get("n_enc"), "n_dec": c.get("n_dec"), "bandwidth_gb": c.get("bandwidth_gb"),
           "actual_n_enc": actual.get("n_enc"), "actual_n_dec": actual.get("n_dec"),
           "actual_bandwidth_gb": actual.get("bandwidth_gb"), "acceptance": c.get("acceptance"),
           "steps_per_block": sum(blocks) / len(blocks) if blocks else None,
           "decode_graph_calls": c.get("decode_graph_calls"), "stop_reason": result.stop_reason,
           "sha1": hashlib.sha1(result.bytes).hexdigest()}
    return run, gaps


def _per_byte(runs: list[dict], key: str) -> dict:
    return summary(r[key] / r["new_bytes"] for r in runs if r.get(key) is not None and r["new_bytes"])


def run(targets, cfg: DecodeConfig, quiet: bool = False) -> dict:
    section = {"config": cfg.to_dict(), "targets": []}
    for target in targets:
        gen = target.load()
        settings = usable(list(cfg.settings), gen)
        prompts = {c: heldout_prompts(cfg.prompts, c) for c in cfg.contexts}
        for s in settings:  # warm-up: load every graph and block size once
            gen.generate(prompts[cfg.contexts[0]][0][:64], mode=s.mode, max_new_bytes=8, **s.options)
        rng = random.Random(cfg.seed)
        runs, gaps = [], {}
        bar = progress(cfg.repeats * len(cfg.contexts) * cfg.prompts * len(settings),
                       f"decode {target.describe(gen)}", quiet)
        for repeat in range(cfg.repeats):
            for ctx in cfg.contexts:
                for p, prompt in enumerate(prompts[ctx]):
                    for s in rng.sample(settings, len(settings)):
                        r, g = measure(gen, prompt, s, cfg.new_bytes)
                        r.update(context=ctx, prompt=p, repeat=repeat, prompt_bytes=len(prompt))
                        runs.append(r)
                        gaps.setdefault((s.spec, ctx), []).extend(g)
                        bar.update()
        bar.close()
        rows = [_row(s, ctx, runs, gaps.get((s.spec, ctx), [])) for ctx in cfg.contexts for s in settings]
        section["targets"].append({"target": target.describe(gen), "backend": target.backend,
                                   "precision": target.precision, "device": target.device,
                                   "layout": getattr(gen.backend, "layout", None), "rows": rows, "runs": runs})
        gen.close()
    return section


def _row(s: Setting, ctx: int, runs: list[dict], gaps: list[float]) -> dict:
    mine = [r for r in runs if r["setting"] == s.spec and r["context"] == ctx]
    ar = {(r["prompt"], r["repeat"]): r for r in runs if r["setting"] == "ar" and r["context"] == ctx}
    same = [r["sha1"] == ar[(r["prompt"], r["repeat"])]["sha1"] for r in mine if (r["prompt"], r["repeat"]) in ar]
    row = {"setting": s.spec, "label": s.label, "mode": s.mode, "context": ctx, "runs": len(mine),
           "bytes_per_s": summary(r["bytes_per_s"] for r in mine),
           "prefill_ms": summary(1e3 * r["prefill_s"] for r in mine),
           "ttfb_ms": summary(1e3 * r["ttfb_s"] for r in mine if r["ttfb_s"] is not None),
           "latency_ms": summary(1e3 * g for g in gaps),
           "acceptance": summary(r["acceptance"] for r in mine),
           "steps_per_block": summary(r["steps_per_block"] for r in mine),
           "same_as_ar": sum(same) / len(same) if same else None}
    for key in ("n_enc", "n_dec", "bandwidth_gb", "actual_n_enc", "actual_n_dec", "actual_bandwidth_gb"):
        row[f"{key}_per_byte"] = _per_byte(mine, key)
    return row


def _saving(row: dict, ar: dict | None, key: str) -> float | None:
    a, b = (ar or {}).get(key, {}).get("median"), row[key]["median"]
    return None if not a or b is None else 1.0 - b / a


def main_context(section: dict) -> int:
    ctxs = section["config"]["contexts"]
    return 1024 if 1024 in ctxs else ctxs[len(ctxs) // 2]


def render(section: dict) -> str:
    cfg, ctx = section["config"], main_context(section)
    out = [f"Greedy, {cfg['new_bytes']} new bytes per run, {cfg['prompts']} held-out prompts × {cfg['repeats']} "
           f"repeats per context ({', '.join(map(str, cfg['contexts']))} bytes), modes interleaved. Medians with "
           "(min–max); per-byte latency pools every byte after the first. N_enc, N_dec and bandwidth per generated "
           "byte in the paper's accounting, the runtime's actual graph calls in brackets; bandwidth "
           "2·(N_dec·P_dec + N_enc·(P_enc+P_glob)) bytes (Eq. 8) with this model's parameter counts."]
    for t in section["targets"]:
        rows = [r for r in t["rows"] if r["context"] == ctx]
        ar = next((r for r in rows if r["mode"] == "ar"), None)
        body = []
        for r in rows:
            sav, sav_a = _saving(r, ar, "bandwidth_gb_per_byte"), _saving(r, ar, "actual_bandwidth_gb_per_byte")
            same = "–" if r["same_as_ar"] is None or r["mode"] == "ar" else f"{100 * r['same_as_ar']:.0f}%"
            body.append([r["label"], spread(r["bytes_per_s"]), fmt(r["prefill_ms"]["median"], 1),
                         fmt(r["ttfb_ms"]["median"], 1),
                         f"{fmt(r['latency_ms']['p50'], 2)} / {fmt(r['latency_ms']['p99'], 2)}",
                         _pair(r, "n_enc", 3), _pair(r, "n_dec", 3), _pair(r, "bandwidth_gb", 2, _mb),
                         f"{_pct(sav)} ({_pct(sav_a)})", fmt(r["acceptance"]["median"], 2),
                         fmt(r["steps_per_block"]["median"], 2), same])
        out += ["", f"**{t['target']}**, context {ctx} bytes:", "",
                table(["mode", "bytes/s", "prefill ms", "TTFB ms", "ms/byte p50 / p99", "N_enc/byte", "N_dec/byte",
                       "MB/byte", "BW saving vs AR", "acceptance", "steps/block", "output = AR"], body)]
        ctxs = cfg["contexts"]
        if len(ctxs) > 1:
            labels = list(dict.fromkeys(r["label"] for r in t["rows"]))
            grid = {(r["label"], r["context"]): r for r in t["rows"]}
            body = [[label] + [f"{fmt(grid[(label, c)]['bytes_per_s']['median'])} · "
                               f"{fmt(grid[(label, c)]['latency_ms']['p50'], 2)}" if (label, c) in grid else "–"
                               for c in ctxs] for label in labels]
            out += ["", f"{t['target']}: bytes/s · per-byte ms p50 against context length:", "",
                    table(["mode"] + [f"{c} B" for c in ctxs], body)]
    return "\n".join(out)


def _pair(r: dict, key: str, digits: int, value=lambda s: s["median"]) -> str:
    """`paper (actual)` of a per-byte counter."""
    return f"{fmt(value(r[f'{key}_per_byte']), digits)} ({fmt(value(r[f'actual_{key}_per_byte']), digits)})"


def _mb(s: dict) -> float | None:
    return None if s.get("median") is None else 1e3 * s["median"]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%".replace("-", "−")


def plots(section: dict, save, plt) -> list[tuple[str, str]]:
    """bytes/s per mode (main context) and per-byte latency against context length."""
    made = []
    ctx = main_context(section)
    targets = section["targets"]
    fig, ax = plt.subplots(figsize=(8, 0.35 * sum(len([r for r in t["rows"] if r["context"] == ctx])
                                                  for t in targets) + 1.5))
    y, ticks = 0, []
    for i, t in enumerate(targets):
        rows = [r for r in t["rows"] if r["context"] == ctx]
        ys = [y + j for j in range(len(rows))]
        med = [r["bytes_per_s"]["median"] or 0 for r in rows]
        err = [[m - (r["bytes_per_s"]["min"] or m) for m, r in zip(med, rows, strict=True)],
               [(r["bytes_per_s"]["max"] or m) - m for m, r in zip(med, rows, strict=True)]]
        ax.barh(ys, med, xerr=err, color=f"C{i}", label=t["target"], capsize=2)
        ticks += [(yy, r["label"]) for yy, r in zip(ys, rows, strict=True)]
        y += len(rows) + 1
    ax.set_yticks([p for p, _ in ticks], [lab for _, lab in ticks], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("bytes/s (median, bar: min–max)")
    ax.set_title(f"Decode speed per mode, {ctx}-byte held-out prompts")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save(fig, "bytes_per_s.png")
    made.append(("Bytes/s per mode", "bytes_per_s.png"))
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4.2), squeeze=False)
    for ax, t in zip(axes[0], targets, strict=True):
        for j, label in enumerate(dict.fromkeys(r["label"] for r in t["rows"])):
            pts = sorted((r["context"], r["latency_ms"]["p50"]) for r in t["rows"] if r["label"] == label)
            ax.plot([c for c, _ in pts], [v for _, v in pts], marker="o", label=label, color=f"C{j % 10}",
                    linestyle="-" if j < 10 else "--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (bytes)")
        ax.set_ylabel("per-byte latency p50 (ms)")
        ax.set_title(t["target"], fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save(fig, "latency_vs_context.png")
    made.append(("Per-byte latency against context length", "latency_vs_context.png"))
    return made
