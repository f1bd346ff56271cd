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


def run_scale(work: Path, preset: str, precisions: str, new_bytes: int, log=print) -> dict:
    """Every stage in order; returns the results dict (also written to work/scale.json)."""
    work.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    ckpt, bundle = work / preset, work / f"{preset}-bundle"
    results: dict = {"date": datetime.date.today().isoformat(), "machine": _machine(), "commit": _commit(),
                     "preset": preset, "stages": {}}
    stages = [
        ("init", [str(bindir / "blt-export"), "init", "--preset", preset, "--diffusion", "--out", str(ckpt)]),
        ("inspect", [str(bindir / "blt-export"), "inspect", str(ckpt), "--json"]),
        ("build", [str(bindir / "blt-export"), "build", str(ckpt), "--out", str(bundle), "--precision", precisions,
                   "--engines", "no", "--heldout-windows", "1", "--calibration-prompts", "1"]),
        ("check", [str(bindir / "blt-export"), "check", str(bundle)]),
    ]
    for name, cmd in stages:
        if name == "init" and (ckpt / "config.json").is_file():
            log(f"{name}: {ckpt} exists, kept")
            continue
        log(f"{name}: {' '.join(cmd)}")
        results["stages"][name] = _timed(cmd, work / f"{name}.log")
        log(f"  {results['stages'][name]['seconds']} s, peak RSS {results['stages'][name]['peak_rss_gb']} GB")
        if name == "inspect":
            text = (work / "inspect.log").read_text()
            start = text.index("{")
            end = text.rindex("}") + 1
            results["inspect"] = json.loads(text[start:end])
    results["checkpoint_bytes"] = _dir_bytes(ckpt)
    results["bundle_bytes"] = _dir_bytes(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    results["bundle_quality"] = manifest.get("quality", {})
    for precision in precisions.split(","):
        out = work / f"generate-{precision}.json"
        cmd = [sys.executable, "-m", "fastblt.benchmarks.scale", "--generate", str(bundle), precision,
               str(new_bytes), str(out)]
        log(f"generate ({precision}): 32 bytes in each mode")
        stage = _timed(cmd, work / f"generate-{precision}.log")
        results["stages"][f"generate-{precision}"] = stage
        results[f"generate-{precision}"] = json.loads(out.read_text())
        log(f"  {stage['seconds']} s, peak RSS {stage['peak_rss_gb']} GB")
    (work / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def generate_all(bundle: str, precision: str, new_bytes: int) -> dict:
    """Load the bundle once on ORT CPU, generate greedily in every mode, time each graph."""
    from fastblt.benchmarks.common import TimedBackend
    from fastblt.runtime.backends.ort import OrtBackend
    from fastblt.runtime.generator import Generator

    t0 = time.perf_counter()
    backend = TimedBackend(OrtBackend(bundle, precision))
    load_s = time.perf_counter() - t0
    gen = Generator(backend)
    cfg = backend.config
    out: dict = {"precision": precision, "load_seconds": round(load_s, 1), "layout": backend.layout, "modes": {}}
    texts = {}
    for mode in MODES:
        if mode in ("bltd", "bltdv") and not cfg.block_sizes:
            out["modes"][mode] = {"skipped": "the model has no diffusion-trained decoder"}
            continue
        backend.records.clear()
        options = {"block_size": 8} if mode in ("bltd", "bltdv") else {}
        options |= {"draft_k": 4} if mode == "blts" else {}
        result = gen.generate(PROMPT, mode=mode, max_new_bytes=new_bytes, **options)
        per_graph: dict[str, list[float]] = {}
        for graph, _, seconds in backend.records:
            per_graph.setdefault(graph, []).append(seconds)
        texts[mode] = result.bytes
        out["modes"][mode] = {
            "bytes_per_s": round(result.bytes_per_s, 3), "seconds": round(result.seconds, 2),
            "prefill_seconds": round(result.prefill_seconds, 2), "new_bytes": len(result.bytes),
            "counters": result.counters,
            "graph_ms": {g: {"calls": len(v), "mean_ms": round(1000 * sum(v) / len(v), 2)}
                         for g, v in sorted(per_graph.items())}}
    out["greedy_equal_to_ar"] = {m: texts[m] == texts["ar"] for m in ("blts", "bltdv") if m in texts}
    return out


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
