"""Helpers every `blt-bench` subcommand shares: held-out prompts, the machine record, statistics, Markdown
tables, atomic writes, mode settings, loading a generator, progress bars, and a per-call timing proxy."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from fastblt.graphs.training.data import corpus_documents
from fastblt.runtime.unmask import UnmaskConfig

REPO = Path(__file__).resolve().parents[1]


class BenchError(ValueError):
    """A benchmark request that cannot run (bad option, missing input)."""


# ---- held-out text ---------------------------------------------------------------------------------------------
def heldout_text(n_bytes: int) -> bytes:
    """`n_bytes` of held-out standard-library source (never seen in training), cut at a line end."""
    out = b""
    for doc in corpus_documents(None, "heldout"):
        out += doc.read()
        if len(out) >= n_bytes:
            break
    cut = out[:n_bytes].rfind(b"\n")
    return out[: cut + 1 if cut > n_bytes // 2 else n_bytes]


def heldout_files(min_bytes: int = 0) -> list[tuple[str, bytes]]:
    """Held-out documents (the split graphs/training/data.py defines: CRC32(path) % 20 == 0), as (path, bytes)."""
    out = []
    for doc in corpus_documents(None, "heldout"):
        data = doc.read()
        if len(data) >= min_bytes:
            out.append((doc.source, data))
    return out


def heldout_prompts(n: int, length: int) -> list[bytes]:
    """`n` prompts of about `length` bytes, each from a different held-out file, cut at a line end."""
    prompts = []
    for _, data in heldout_files(length + 256):
        cut = data[:length].rfind(b"\n")
        prompts.append(data[: cut + 1 if cut > length // 2 else length])
        if len(prompts) == n:
            return prompts
    if not prompts:
        raise BenchError(f"no held-out file has {length} bytes; use a shorter context")
    return [prompts[i % len(prompts)] for i in range(n)]


# ---- the machine ---------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[dict]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [dict(zip(("name", "memory", "driver"), (c.strip() for c in line.split(",")), strict=False))
            for line in out.splitlines() if line.strip()]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit
            else None}


def machine() -> dict:
    """Where a measurement was taken: CPU, cores, memory, GPUs, library versions, commit, date."""
    ort_providers = None
    try:
        import onnxruntime

        ort_providers = onnxruntime.get_available_providers()
    except ImportError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gb": _memory_gb(), "gpus": _gpus(),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("fastblt", "numpy", "onnxruntime", "onnxruntime-gpu", "tensorrt",
                                              "torch", "transformers")},
        "ort_providers": ort_providers, "load_average": [round(x, 2) for x in load] if load else None,
        **_git(),
    }


def machine_line(m: dict) -> str:
    gpu = ", ".join(g["name"] for g in m.get("gpus") or []) or "no GPU"
    v = m.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "onnxruntime-gpu", "tensorrt", "torch") if v.get(k))
    commit = (m.get("commit") or "unknown")[:10] + (" (uncommitted changes)" if m.get("dirty") else "")
    return (f"{m.get('date')} · {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GiB, {gpu} · "
            f"Python {m.get('python')}, {libs} · commit {commit} · load average at start {m.get('load_average')}")


# ---- statistics and tables -----------------------------------------------------------------------------------
def summary(values) -> dict:
    """Median, min, max and tail percentiles of a sample (None when empty)."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "median": None, "min": None, "max": None, "p50": None, "p90": None, "p99": None}
    return {"n": int(a.size), "median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99))}


def fmt(x, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and (abs(x) >= 1e4 or (0 < abs(x) < 10 ** -digits)):
        return f"{x:.{max(digits, 2)}g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def spread(s: dict, digits: int = 1) -> str:
    """`median (min–max)` of a summary."""
    if not s or s.get("median") is None:
        return "–"
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}–{fmt(s['max'], digits)})"


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c).replace("|", "¦").replace("\n", "⏎") for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                     + ["| " + " | ".join(r) + " |" for r in cells])


# ---- output ----------------------------------------------------------------------------------------------------


def progress(total: int, desc: str, quiet: bool = False):
    """A tqdm bar on stderr (none when quiet)."""
    try:
        from tqdm import tqdm
    except ImportError:
        raise ImportError("blt-bench needs tqdm for its progress bars: pip install 'fastblt[bench]'") from None
    return tqdm(total=total, desc=desc, disable=quiet, leave=False, dynamic_ncols=True)


# ---- mode settings ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One decoding mode with its options, e.g. `blts/k=16`, `bltd/B=8/alpha=0.7`, `bltdv/B=8/one_step`,
    `bltd/B=8/alpha=0.7/forced` (blocks after the sequence with the open patch closed by force)."""

    spec: str
    mode: str
    options: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def label(self) -> str:
        o = self.options
        name = {"ar": "AR", "blts": "BLT-S", "bltd": "BLT-D", "bltdv": "BLT-DV"}[self.mode]
        if self.mode == "blts":
            return f"{name} k={o['draft_k']}"
        if self.mode in ("bltd", "bltdv"):
            u = o["unmask"]
            rule = {"confidence": f"α={u.alpha:g}", "entropy": f"γ={u.gamma:g}", "one_step": "one-step"}[u.rule]
            return f"{name} B={o['block_size']} {rule}" + (" forced" if o.get("block_start") == "forced" else "")
        return name

    @property
    def block_size(self) -> int | None:
        return self.options.get("block_size")


_SPEC = re.compile(r"^(ar|blts|bltd|bltdv)((?:/[A-Za-z_]+(?:=[0-9.]+)?)*)$")


def parse_setting(spec: str) -> Setting:
    m = _SPEC.match(spec.strip())
    if not m:
        raise BenchError(f"mode setting {spec!r}: write MODE[/opt...], e.g. ar, blts/k=16, bltd/B=8/alpha=0.7, "
                         "bltd/B=8/gamma=1.0, bltdv/B=8/one_step")
    mode, opts = m.group(1), dict(o.partition("=")[::2] for o in m.group(2).split("/")[1:])
    try:
        if mode == "ar":
            assert not opts
            return Setting(spec, mode, {})
        if mode == "blts":
            assert set(opts) == {"k"}
            return Setting(spec, mode, {"draft_k": int(opts["k"])})
        start = "forced" if opts.pop("forced", None) is not None else None
        assert "B" in opts and len(opts) == 2
        if "alpha" in opts:
            unmask = UnmaskConfig("confidence", alpha=float(opts["alpha"]))
        elif "gamma" in opts:
            unmask = UnmaskConfig("entropy", gamma=float(opts["gamma"]))
        else:
            assert "one_step" in opts
            unmask = UnmaskConfig("one_step")
        return Setting(spec, mode, {"block_size": int(opts["B"]), "unmask": unmask.validate(), "block_start": start})
    except (AssertionError, ValueError):
        raise BenchError(f"mode setting {spec!r}: ar takes no options; blts takes k=N; bltd/bltdv take B=N and one "
                         "of alpha=X, gamma=X, one_step (and optionally forced)") from None


def parse_settings(text: str) -> list[Setting]:
    return [parse_setting(s) for s in text.split(",") if s.strip()]


def usable(settings: list[Setting], gen) -> list[Setting]:
    """The settings this model can run: diffusion modes need a diffusion-trained decoder and a bundled B."""
    sizes = set(gen.config.block_sizes or ())
    manifest = getattr(gen.backend, "manifest", None)
    if manifest is not None:
        sizes &= set(manifest.block_sizes)
    return [s for s in settings if s.mode in ("ar", "blts") or (gen.config.diffusion_trained and s.block_size in sizes)]


# ---- loading and timing ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What to benchmark: a bundle (ort/trt) or a checkpoint (torch), one precision, device and layout."""

    source: str | None
    backend: str
    precision: str = "fp32"
    device: str = "cpu"
    layout: str = "auto"

    def load(self):
        import fastblt.runtime as rt
        from fastblt.runtime.backends import load_backend

        if self.backend == "torch":
            return rt.Generator(load_backend("torch", self.source or rt.default_source()))
        if not self.source:
            raise BenchError(f"backend {self.backend!r} runs a bundle: pass --bundle DIR (build one with "
                             "`blt-export build --out DIR`)")
        opts = {"precision": self.precision}
        if self.backend == "ort":
            opts.update(device=self.device, layout=self.layout)
        return rt.Generator(load_backend(self.backend, self.source, **opts))

    def describe(self, gen=None) -> str:
        if self.backend == "torch":
            return "torch reference"
        layout = getattr(getattr(gen, "backend", None), "layout", None) or self.layout
        return f"{self.backend} {self.precision}" + (f" {self.device} {layout}" if self.backend == "ort" else "")


class TimedBackend:
    """Wraps a backend; records (graph, rows, seconds) for every call, in place or not."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.records: list[tuple[str, int, float]] = []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def _timed(self, fn, graph, feeds, *args):
        rows = next((v.shape[1] for k, v in feeds.items() if k in ("ids", "states", "patch_states") and v.ndim >= 2), 1)
        t0 = time.perf_counter()
        out = fn(graph, feeds, *args)
        self.records.append((graph, int(rows), time.perf_counter() - t0))
        return out

    def run(self, graph, feeds):
        return self._timed(self._backend.run, graph, feeds)

    def run_in_place(self, graph, feeds, cache, keep=True):
        return self._timed(self._backend.run_in_place, graph, feeds, cache, keep)
