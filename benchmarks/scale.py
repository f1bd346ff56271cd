"""`blt-bench scale`: the public BLT-1B shape (random init) through the whole toolchain, stage by stage, each stage
a separate process under `/usr/bin/time -v` so its peak RSS is its own.

Stages: init (HF-format, sharded, bf16) → inspect → build (fp32 + int8-dynamic, ORT CPU) → check (sha256 of
every file, then a load and a short greedy sample per precision) → generate (32 bytes in all four modes per
precision, per-graph latency, greedy BLT-S / BLT-DV against AR). Writes one JSON; docs/scale.md quotes it.
Random weights close a patch at almost every byte (their next-byte entropy is near log 256), so every byte
runs the global model: the per-mode numbers are an upper bound on the global model's share, not a forecast of
a trained model's speed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

MODES = ("ar", "bltd", "blts", "bltdv")
PROMPT = "def fibonacci(n):\n    "


def _timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd` under /usr/bin/time -v; its output goes to `log`. Returns wall seconds, peak RSS and the
    return code; a failed stage raises with the log's tail."""
    time_bin = "/usr/bin/time"
    full = [time_bin, "-v", *cmd] if os.path.exists(time_bin) else cmd
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(full, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    seconds = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    out = {"command": " ".join(cmd), "seconds": round(seconds, 1),
           "peak_rss_gb": round(int(match.group(1)) * 1024 / 1e9, 2) if match else None, "rc": rc}
    if rc != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise RuntimeError(f"stage failed (exit {rc}): {out['command']}\n{tail}")
    return out


def _dir_bytes(path: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for f in path.rglob("*"):
        if f.is_file():
            parts = f.relative_to(path).parts
            top = parts[0] if len(parts) > 1 else "."
            sizes[top] = sizes.get(top, 0) + f.stat().st_size
    return sizes


def run_scale(work: Path, preset: str, precisions: str, new_bytes: int, log=print, small: Path | None = None) -> dict:
    """Every stage in order; returns the results dict (also written to work/scale.json). A checkpoint or bundle
    already in `work` is kept (its stage's earlier measurement stays in scale.json, with that run's date);
    precisions the bundle lacks are added with `blt-export quantize`. `small`: a bundle of the trained default
    model whose call counts feed the projection (built into work/default-bundle when missing)."""
    work.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    ckpt, bundle = work / preset, work / f"{preset}-bundle"
    previous = json.loads((work / "scale.json").read_text()) if (work / "scale.json").is_file() else {}
    results: dict = {"date": datetime.date.today().isoformat(), "machine": _machine(), "commit": _commit(),
                     "preset": preset, "stages": dict(previous.get("stages", {}))}
    for stage in results["stages"].values():  # kept stages carry the date of the run that measured them
        stage.setdefault("date", previous.get("date"))
    wanted = [p for p in precisions.split(",") if p]
    export = str(bindir / "blt-export")
    stages = [
        ("init", [export, "init", "--preset", preset, "--diffusion", "--out", str(ckpt)]),
        ("inspect", [export, "inspect", str(ckpt), "--json"]),
        ("build", [export, "build", str(ckpt), "--out", str(bundle), "--precision", precisions,
                   "--engines", "no", "--heldout-windows", "1", "--calibration-prompts", "1"]),
    ]
    kept = {"init": ckpt / "config.json", "build": bundle / "manifest.json"}
    for name, cmd in stages:
        if name in kept and kept[name].is_file():
            log(f"{name}: {kept[name].parent} exists, kept")
            continue
        _stage(results, name, cmd, work, log)
        if name == "inspect":
            text = (work / "inspect.log").read_text()
            results["inspect"] = json.loads(text[text.index("{"):text.rindex("}") + 1])
    have = json.loads((bundle / "manifest.json").read_text())["precisions"]
    missing = [p for p in wanted if p not in have]
    if missing:
        _stage(results, f"quantize-{'-'.join(missing)}", [export, "quantize", str(bundle), "--precision",
                                                           ",".join(missing), "--heldout-windows", "1"], work, log)
    _stage(results, "check", [export, "check", str(bundle)], work, log)
    results["checkpoint_bytes"] = _dir_bytes(ckpt)
    results["bundle_bytes"] = _dir_bytes(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    results["bundle_quality"] = manifest.get("quality", {})
    results["graph_bytes"] = {p: _graph_bytes(manifest, p) for p in manifest["precisions"]}
    results["hash_table"] = manifest.get("hash_table", {})
    for precision in wanted:
        out = work / f"generate-{precision}.json"
        cmd = [sys.executable, "-m", "fastblt.benchmarks.scale", "--generate", str(bundle), precision,
               str(new_bytes), str(out)]
        _stage(results, f"generate-{precision}", cmd, work, log)
        results[f"generate-{precision}"] = json.loads(out.read_text())
    small = small or work / "default-bundle"
    if not (small / "manifest.json").is_file():
        _stage(results, "default-build", [export, "build", "--out", str(small), "--precision", "fp32",
                                          "--engines", "no"], work, log)
    out = work / "generate-default.json"
    _stage(results, "generate-default", [sys.executable, "-m", "fastblt.benchmarks.scale", "--generate", str(small),
                                         "fp32", "128", str(out)], work, log)
    results["default_model"] = json.loads(out.read_text())
    results["regime"] = {p: regime(results[f"generate-{p}"]) for p in wanted}
    results["regime"]["default-fp32"] = regime(results["default_model"])
    results["projection"] = {p: projection(results[f"generate-{p}"], results["default_model"]) for p in wanted}
    (work / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _stage(results: dict, name: str, cmd: list[str], work: Path, log) -> None:
    log(f"{name}: {' '.join(cmd)}")
    results["stages"][name] = _timed(cmd, work / f"{name}.log") | {"date": datetime.date.today().isoformat()}
    log(f"  {results['stages'][name]['seconds']} s, peak RSS {results['stages'][name]['peak_rss_gb']} GB")


def _graph_bytes(manifest: dict, precision: str) -> int:
    """Bytes of one precision's graph files (ONNX and external data, each file once)."""
    seen: dict[str, int] = {}
    for entry in manifest["graphs"].values():
        record = entry["files"].get(precision)
        if record:
            seen[record["path"]] = record["bytes"]
            seen.update({d["path"]: d["bytes"] for d in record.get("data", [])})
    return sum(seen.values())


SETTINGS = "ar,blts/k=16,bltd/B=8/alpha=0.7,bltd/B=16/alpha=0.7,bltdv/B=8/alpha=0.7"  # the paper's regime: k=16, B=8/16


def generate_all(bundle: str, precision: str, new_bytes: int, settings: str = SETTINGS) -> dict:
    """Load the bundle once on ORT CPU, generate greedily in every setting, time each graph call; measure this
    machine's memory bandwidth and each graph's read bound (its weight bytes ÷ that bandwidth)."""
    from fastblt.benchmarks.common import TimedBackend, parse_settings, summary, usable
    from fastblt.runtime.backends.ort import OrtBackend
    from fastblt.runtime.generator import Generator

    t0 = time.perf_counter()
    backend = TimedBackend(OrtBackend(bundle, precision))
    load_s = time.perf_counter() - t0
    gen = Generator(backend)
    cfg = backend.config
    out: dict = {"precision": precision, "load_seconds": round(load_s, 1), "layout": backend.layout, "modes": {}}
    texts, calls = {}, []
    runnable = usable(parse_settings(settings), gen)
    for setting in parse_settings(settings):
        if setting not in runnable:
            out["modes"][setting.spec] = {"skipped": "the bundle has no diffusion decoder for this block size"}
            continue
        backend.records.clear()
        result = gen.generate(PROMPT, mode=setting.mode, max_new_bytes=new_bytes, **setting.options)
        calls += [(setting.spec, *r) for r in backend.records]
        per_graph: dict[str, list[float]] = {}
        for graph, _, seconds in backend.records:
            per_graph.setdefault(graph, []).append(seconds)
        texts[setting.spec] = result.bytes
        out["modes"][setting.spec] = {
            "mode": setting.mode, "bytes_per_s": round(result.bytes_per_s, 3), "seconds": round(result.seconds, 2),
            "prefill_seconds": round(result.prefill_seconds, 2), "new_bytes": len(result.bytes),
            "counters": result.counters,
            "graph_ms": {g: {"calls": len(v), "mean_ms": round(1000 * sum(v) / len(v), 2)}
                         for g, v in sorted(per_graph.items())}}
    ar = texts.get("ar")
    out["greedy_equal_to_ar"] = {k: v == ar for k, v in texts.items() if k.startswith(("blts", "bltdv"))}
    latency: dict = {}  # graph -> rows -> p50/p90 over every call of the run
    for _, graph, rows, seconds in calls:
        latency.setdefault(graph, {}).setdefault(str(rows), []).append(1000 * seconds)
    out["latency_ms"] = {g: {r: {k: summary(v)[k] for k in ("p50", "p90")} | {"calls": len(v)}
                             for r, v in sorted(by.items(), key=lambda x: int(x[0]))} for g, by in latency.items()}
    bandwidth = memory_bandwidth()
    out["memory_bandwidth_gb_s"] = round(bandwidth / 1e9, 2)
    manifest = backend.manifest
    out["read_bound_ms"] = {}
    for graph in latency:
        key = graph if graph != "decoder_block" else f"decoder_block_{cfg.block_sizes[0]}" if cfg.block_sizes else graph
        files = [k for k in (f"fused_{graph}", key) if manifest.has_file(k, precision)]
        if files:
            entry = manifest.file_entry(files[0] if backend.layout == "fused" else files[-1], precision)
            out["read_bound_ms"][graph] = round(1000 * entry.weight_bytes / bandwidth, 2)
    return out


def memory_bandwidth(gib: float = 1.0, threads: int | None = None) -> float:
    """Bytes/s this machine reads from memory: every core summing its share of a buffer far larger than the
    caches (numpy releases the GIL in the reduction), best of three."""
    import threading

    import numpy as np

    threads = threads or os.cpu_count() or 1
    buf = np.ones(int(gib * 2**30) // 8, dtype=np.float64)
    parts = np.array_split(buf, threads)
    best = 0.0
    for _ in range(3):
        workers = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, buf.nbytes / (time.perf_counter() - t0))
    return best


def projection(scale: dict, small: dict) -> dict:
    """Each mode's speed at the large shape, projected from the large shape's per-call latencies and the small
    (trained) model's call counts per generated byte:

        ms/byte(mode) = Σ_graph calls_per_byte(graph, mode; small model) × ms_per_call(graph, mode; large shape)

    and speed-up(mode) = ms/byte(AR) / ms/byte(mode). A random-init large model closes a patch at almost every
    byte and accepts few drafts, so its own counters say little; the trained model's do. The same formula with
    the small model's own latencies is checked against its measured speed-up (`check` rows)."""
    out: dict = {"formula": "ms/byte(mode) = Σ_g calls_per_byte(g, mode; trained default model) × "
                            "ms_per_call(g, mode; BLT-1B shape); speed-up = ms/byte(AR) / ms/byte(mode)",
                 "modes": {}}

    def per_byte(run: dict, spec: str, latencies: dict) -> float | None:
        row = run["modes"].get(spec)
        if not row or "counters" not in row or not row["new_bytes"]:
            return None
        calls = row["counters"]["decode_graph_calls"]
        total = 0.0
        for graph, n in calls.items():
            ms = latencies["modes"].get(spec, {}).get("graph_ms", {}).get(graph, {}).get("mean_ms")
            if ms is None:
                return None
            total += n / row["new_bytes"] * ms
        return total

    ar_big, ar_small = per_byte(small, "ar", scale), per_byte(small, "ar", small)
    for spec, row in small["modes"].items():
        if "counters" not in row:
            continue
        big, own = per_byte(small, spec, scale), per_byte(small, spec, small)
        ar_speed = small["modes"]["ar"]["bytes_per_s"]
        measured = row["bytes_per_s"] / ar_speed if ar_speed else None
        out["modes"][spec] = {
            "projected_speedup_at_scale": round(ar_big / big, 2) if big and ar_big else None,
            "projected_ms_per_byte_at_scale": round(big, 3) if big else None,
            "check_projected_speedup_small": round(ar_small / own, 2) if own and ar_small else None,
            "measured_speedup_small": round(measured, 2) if measured else None,
            "counters_small": {k: row["counters"].get(k) for k in ("n_enc", "n_dec", "iterations", "acceptance")
                               if k in row["counters"]}}
    return out


def regime(run: dict) -> dict:
    """The paper's regime at this shape: one encoder + global call against one decoder call (AR decode steps),
    in time and in weight bytes."""
    lat = run["latency_ms"]
    one = {g: lat.get(g, {}).get("1", {}).get("p50") for g in ("encoder", "global", "decoder_step")}
    if None in one.values():
        return {}
    return {"encoder_plus_global_ms": round(one["encoder"] + one["global"], 2), "decoder_step_ms": round(
        one["decoder_step"], 2), "ratio": round((one["encoder"] + one["global"]) / one["decoder_step"], 2)}


PAPER_RATIO_1B = 8.1  # one encoder+global call's weights ÷ one decoder call's at the paper's 1B (decoding-modes notes)


def render(results: dict) -> str:
    """docs/scale.md's measured tables, generated from scale.json (never edited by hand)."""
    pre = [p for p in ("fp32", "fp16", "int8-dynamic", "int4") if f"generate-{p}" in results]
    lines = [f"`blt-bench scale` on {results['date']}, {results['machine']}, commit {results.get('commit')}; ONNX "
             "Runtime CPU. Random-init weights (their patches close at almost every byte), so per-mode speeds are "
             "the global model's worst case; the projection below uses the trained default model's counters.", ""]
    lines += ["| stage | command | date | wall time | peak RSS |", "|---|---|---|---|---|"]
    for name, st in results["stages"].items():
        cmd = " ".join(Path(a).name if a.startswith("/") else a for a in st["command"].split())
        cmd = cmd.replace("python3 -m fastblt.benchmarks.scale --generate", "generate:")
        lines.append(f"| {name} | `{cmd[:200]}` | {st.get('date')} | {st['seconds']:.0f} s | {st['peak_rss_gb']} GB |")
    gb = results.get("graph_bytes", {})
    if gb:
        lines += ["", "Graph bytes on disk per precision (ONNX + external data, each weight once):", "",
                  "| precision | bytes | share of fp32 |", "|---|---|---|"]
        for p, n in gb.items():
            lines.append(f"| {p} | {n / 1e9:.2f} GB | {100 * n / gb['fp32']:.0f}% |")
    lines += ["", "Per-graph latency of one decode call (1 new row; global: 1 patch; decoder_block: B rows) against "
              "its read bound, the graph's weight bytes ÷ this machine's measured memory bandwidth "
              f"({results[f'generate-{pre[0]}']['memory_bandwidth_gb_s']} GB/s, every core reading):", "",
              "| precision | graph | rows | p50 ms | p90 ms | read bound ms | p50 ÷ bound |",
              "|---|---|---|---|---|---|---|"]
    for p in pre:
        run = results[f"generate-{p}"]
        for graph in ("patcher", "encoder", "global", "decoder_step", "decoder_block", "draft_step"):
            by = run["latency_ms"].get(graph)
            if not by:
                continue
            rows = "1" if "1" in by else max(by, key=lambda r: by[r]["calls"])
            r, bound = by[rows], run["read_bound_ms"].get(graph)
            ratio = f"{r['p50'] / bound:.1f}×" if bound else "–"
            lines.append(f"| {p} | {graph} | {rows} | {r['p50']:.1f} | {r['p90']:.1f} | "
                         f"{'–' if bound is None else f'{bound:.1f}'} | {ratio} |")
    specs = list(results[f"generate-{pre[0]}"]["modes"])
    lines += ["", "Bytes/s per mode (32 new bytes, greedy; = AR: byte-identical to AR's output):", "",
              "| precision | " + " | ".join(specs) + " |", "|---" * (len(specs) + 1) + "|"]
    for p in pre:
        run = results[f"generate-{p}"]
        eq = run.get("greedy_equal_to_ar", {})
        cells = [f"{run['modes'][k].get('bytes_per_s', 0):.2f}" + ("" if k not in eq else " (= AR)" if eq[k] else
                                                                  " (≠ AR)") for k in specs]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines += ["", "The paper's regime: one encoder + global call against one decoder call (p50, 1 row each):", "",
              "| model | encoder + global ms | decoder_step ms | ratio |", "|---|---|---|---|"]
    for name, r in results["regime"].items():
        if r:
            lines.append(f"| {results['preset'] if name != 'default-fp32' else 'default model'} "
                         f"{'' if name == 'default-fp32' else name} | {r['encoder_plus_global_ms']} | "
                         f"{r['decoder_step_ms']} | {r['ratio']}× |")
    lines.append(f"| paper, 1B (weights read, not time) | | | {PAPER_RATIO_1B}× |")
    for p in pre:
        proj = results["projection"][p]
        lines += ["", f"Projection ({p}), a projection, not a measurement: {proj['formula']}.", "",
                  "| mode | projected speed-up at BLT-1B | same formula on the default model | measured on the "
                  "default model |", "|---|---|---|---|"]
        for spec, r in proj["modes"].items():
            lines.append(f"| {spec} | {r['projected_speedup_at_scale']}× | {r['check_projected_speedup_small']}× | "
                         f"{r['measured_speedup_small']}× |")
    return "\n".join(lines) + "\n"


def _machine() -> str:
    cores = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.processor() or platform.machine()}, {cores} cores, {mem:.0f} GiB RAM, {platform.system()}"


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--generate":
    result = generate_all(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    Path(sys.argv[5]).write_text(json.dumps(result, indent=2) + "\n")
