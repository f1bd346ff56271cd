"""The one-command GPU check (`make gpu-check`, or `python -m fastblt.export.gpu_check --bundle BUNDLE`).

What to run the first time an NVIDIA GPU is at hand. It prints the driver, CUDA and TensorRT versions; builds
the bundle's fp32 and int8 engines into a temporary copy of the bundle (low builder optimization level, profiles
narrowed to the check's own inputs, so the builds take minutes, not tens of minutes); compares every engine with
ONNX Runtime on the CPU on real-text inputs (the calls the runtime makes while generating from held-out text in
every mode) within per-output tolerances; then runs the four decoding modes on the engines and prints bytes/s.
Greedy bytes are printed next to ONNX Runtime's for information only: one argmax flip on a near tie would fail a
correct engine, so the pass/fail rule is the per-output comparison.

Without TensorRT but with torch on CUDA it checks the torch backend on CUDA instead, and says so. Exit status:
0 every check passed, 1 a check failed (or TensorRT is installed but cannot run), 2 no usable GPU at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fastblt.graphs.constants import split_graph_key
from fastblt.runtime.backends import BackendBase, static_fused_rows
from fastblt.runtime.trt_device import probe, versions

MODES = ("ar", "bltd", "blts", "bltdv")
NO_GPU, FAILED = 2, 1


def tolerances(refs: list[dict], tol: float, quant_error: dict[str, float] | None = None,
               margin: float = 2.0) -> dict[str, float]:
    """Largest |Δ| allowed per output. fp32: validate.py's rule, tol · max(1, max |reference|). A quantized
    engine may also differ by `margin` × the error ONNX Runtime's own quantized graph has against fp32 on the
    same inputs (TensorRT rounds its int8 activations from slightly different fp32 values)."""
    out = {}
    for name in refs[0]:
        top = max((float(np.abs(r[name]).max()) for r in refs if r[name].size), default=0.0)
        out[name] = tol * max(1.0, top)
        if quant_error is not None:
            out[name] = max(out[name], margin * quant_error.get(name, 0.0))
    return out


def max_abs(got: list[dict], want: list[dict]) -> dict[str, float]:
    """Largest |got - want| per output over paired calls (0 for empty tensors, inf for NaN); shapes must agree."""
    out: dict[str, float] = {}
    for g, w in zip(got, want, strict=True):
        for name, ref in w.items():
            if g[name].shape != ref.shape:
                raise ValueError(f"output {name!r}: shape {g[name].shape}, reference {ref.shape}")
            diff = np.abs(g[name].astype(np.float64) - ref.astype(np.float64))
            worst = float(diff.max()) if diff.size else 0.0
            out[name] = max(out.get(name, 0.0), float("inf") if np.isnan(worst) else worst)  # NaN: never passes
    return out


def compare(label: str, got: list[dict], want: list[dict], atol: dict[str, float], log) -> list[str]:
    """One line per graph; returns a failure line per output beyond its tolerance (NaN always fails)."""
    err = max_abs(got, want)
    bad = [f"{label}:{n} max|Δ|={e:.3g} > {atol[n]:.3g}" for n, e in err.items() if not e <= atol[n]]
    worst = max((e / atol[n] if atol[n] else float("inf") for n, e in err.items()), default=0.0)
    log(f"  {label}: {'ok' if not bad else 'FAILED'} ({len(want)} real-text calls, worst output at "
        f"{worst:.2g}x its tolerance)")
    return bad


def narrow_ranges(ranges: dict, span: int) -> dict:
    """The profile's (min, opt, max) with every length dim capped at `span` (batch, patch length and block
    size untouched): enough for the check's prompts, and much faster to build than the full ranges."""
    out = {}
    for key, (low, opt, high) in ranges.items():
        if key in ("b", "B", "L"):
            out[key] = (low, opt, high)
            continue
        cap = max(low, min(high, span))
        out[key] = (low, min(max(opt, low), cap), cap)
    return out


def real_text(backend, args):
    """Held-out prompts and each graph's real-text calls, recorded through `backend` in every mode."""
    from fastblt.export.calibration import prompts_from, record
    from fastblt.graphs.training.data import heldout_windows

    prompts = prompts_from(heldout_windows(None, 256, args.prompts), args.prompts, args.prompt_bytes)
    return prompts, record(backend, prompts, new_bytes=args.new_bytes, limit=args.calls).records


def run_modes(backend, reference, prompts: list[bytes], new_bytes: int, block: int, log) -> list[str]:
    """Every decoding mode on `backend` (after one warm-up call): bytes/s, and greedy agreement with
    `reference` for information. A mode that raises or produces nothing is a failure."""
    from fastblt.runtime.generator import Generator

    gen, ref = Generator(backend), Generator(reference)
    gen.generate(prompts[0], max_new_bytes=8)
    failures = []
    for mode in MODES:
        options = dict(mode=mode, max_new_bytes=new_bytes, block_size=block, draft_k=4)
        try:
            results = [gen.generate(p, **options) for p in prompts]
        except Exception as exc:
            failures.append(f"{backend.name} {mode}: {type(exc).__name__}: {exc}")
            log(f"  {mode:6s} FAILED: {type(exc).__name__}: {exc}")
            continue
        same = sum(r.bytes == ref.generate(p, **options).bytes for r, p in zip(results, prompts, strict=True))
        rate = sum(len(r.bytes) for r in results) / max(sum(r.seconds - r.prefill_seconds for r in results), 1e-9)
        if not all(r.bytes or r.stop_reason == "eos" for r in results):
            failures.append(f"{backend.name} {mode}: generated no bytes")
        log(f"  {mode:6s} {rate:10.1f} bytes/s   greedy bytes identical to {reference.name} on {same}/{len(prompts)} "
            "prompts (information only)")
    return failures


def _engine_records(work: Path, manifest, precision: str, info, span: int, opt_level: int,
                    workspace: int | None, log) -> list:
    from fastblt.export.trt_build import build_engine
    from fastblt.graphs.spec import dim_ranges

    cfg, records = manifest.config, []
    for key in manifest.standard_keys():
        entry = manifest.graphs[key]
        start = time.perf_counter()
        ranges = narrow_ranges(dim_ranges(cfg, entry.block_size), span)
        record = build_engine(work / entry.files[precision].path, entry.spec(cfg), ranges, precision,
                              work / "engines", info, work / "engines" / "timing.cache", opt_level=opt_level,
                              workspace_bytes=workspace)
        record["graph_key"], record["path"] = key, f"engines/{record['path']}"
        records.append(record)
        log(f"  built {key} ({precision}) in {time.perf_counter() - start:.1f} s")
    return records


def check_tensorrt(bundle: Path, precisions: list[str], info, args, log) -> list[str]:
    """Build, compare and run the bundle's engines; returns the failures (empty: passed)."""
    from fastblt.runtime.backends.ort import OrtBackend
    from fastblt.runtime.backends.trt import TensorRTBackend
    from fastblt.runtime.manifest import EngineEntry, Manifest

    manifest = Manifest.load(bundle)
    missing = [p for p in precisions if p not in manifest.precisions]
    if missing:
        return [f"{bundle}: no {missing} graphs; build the bundle with `blt-export build --precision "
                f"{','.join(['fp32', *precisions])}`"]
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fastblt-gpu-check-") as tmp:
        work = Path(shutil.copytree(bundle, Path(tmp) / "bundle", ignore=shutil.ignore_patterns("engines")))
        work_manifest = Manifest.load(work)
        reference = OrtBackend(work, "fp32", layout="standard")
        prompts, calls = real_text(reference, args)
        span = max(len(p) for p in prompts) + args.new_bytes + 128  # + BOS, drafts/blocks, slack
        engine_records = []
        for precision in precisions:
            log(f"building {precision} engines (builder optimization level {args.opt_level}, lengths <= {span})")
            try:
                workspace = args.workspace_mib << 20 if args.workspace_mib else None
                engine_records += _engine_records(work, work_manifest, precision, info, span, args.opt_level,
                                                  workspace, log)
            except Exception as exc:
                failures.append(f"{precision} engine build: {type(exc).__name__}: {exc}")
                log(f"  FAILED: {exc}")
        engines = tuple(EngineEntry.from_dict(r, "engine record") for r in engine_records)
        dataclasses.replace(work_manifest, engines=engines).write()
        for precision in precisions:
            if any(f.startswith(f"{precision} engine build") for f in failures):
                continue
            log(f"{precision} engines vs ONNX Runtime {precision} (CPU EP), real-text calls:")
            ort_p = OrtBackend(work, precision, layout="standard")
            try:
                engines = TensorRTBackend(work, precision)
            except Exception as exc:
                failures.append(f"{precision} engines do not load: {type(exc).__name__}: {exc}")
                log(f"  FAILED to load: {exc}")
                continue
            try:
                failures += _compare_graphs(engines, ort_p, calls, precision, args, log)
                log(f"{precision} engines, four modes ({len(prompts)} prompts, {args.new_bytes} new bytes):")
                block = _block(work_manifest.block_sizes)
                failures += run_modes(engines, ort_p, prompts, args.new_bytes, block, log)
            finally:
                engines.close()
    return failures


def _compare_graphs(backend, ort_p, calls: dict, precision: str, args, log) -> list[str]:
    failures = []
    for key, pairs in sorted(calls.items()):
        graph, _ = split_graph_key(key)
        feeds = [f for f, _ in pairs]
        want = [ort_p.run(graph, f) for f in feeds]
        quant = None if precision == "fp32" else max_abs(want, [o for _, o in pairs])
        atol = tolerances(want, args.tol, quant, args.margin)
        try:
            got = [backend.run(graph, f) for f in feeds]
        except Exception as exc:
            failures.append(f"{key} ({precision}): {type(exc).__name__}: {exc}")
            log(f"  {key}: FAILED: {exc}")
            continue
        failures += compare(f"{key} ({precision})", got, want, atol, log)
    return failures


def _block(sizes) -> int:
    """The block size the check runs BLT-D/BLT-DV with: 8 where the bundle has it."""
    sizes = list(sizes) or [8]
    return 8 if 8 in sizes else sizes[0]


class TorchCudaBackend(BackendBase):
    """The torch reference graphs on a CUDA device (numpy in and out), for machines without TensorRT."""

    def __init__(self, model, device: str = "cuda") -> None:
        import torch

        from fastblt.graphs.incremental import build_graphs
        from fastblt.graphs.spec import graph_specs

        self.torch, self.device = torch, torch.device(device)
        self.name = f"torch-{self.device.type}"
        from fastblt.runtime.backends.torch_ref import model_hash_table

        self.hash_table = model_hash_table(model)  # host-side, as on every backend
        self.model = model.eval().to(self.device)
        self.config = model.config
        self.specs = graph_specs(self.config)
        self.graphs = {k: g.to(self.device) for k, g in build_graphs(self.model).items()}
        # the calls a bundle's static decoder_block graphs get (as ORT and TensorRT), so the check compares them
        self.fused_block_rows = static_fused_rows(self.config.block_sizes)

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from fastblt.runtime.backends import resolve

        spec = resolve(self.specs, graph, feeds, True)
        # np.array copies: a feed may be a shared read-only array (cached attention biases)
        args = [self.torch.from_numpy(np.array(feeds[n])).to(self.device) for n in spec.input_names]
        with self.torch.inference_mode():
            outs = self.graphs[graph](*args)
        return {n: o.detach().cpu().numpy() for n, o in zip(spec.output_names, outs, strict=True)}

    def close(self) -> None:
        self.graphs = {}


def check_against(backend, reference, args, log) -> list[str]:
    """`backend` vs `reference` (both fp32) on the real-text calls recorded through `reference`, within the fp32
    tolerance, then the four modes on `backend`; returns the failures."""
    prompts, calls = real_text(reference, args)
    failures = []
    for key, pairs in sorted(calls.items()):
        graph, _ = split_graph_key(key)
        want = [o for _, o in pairs]
        try:
            got = [backend.run(graph, f) for f, _ in pairs]
        except Exception as exc:
            failures.append(f"{key} ({backend.name}): {type(exc).__name__}: {exc}")
            log(f"  {key}: FAILED: {exc}")
            continue
        failures += compare(f"{key} ({backend.name})", got, want, tolerances(want, args.tol), log)
    log(f"{backend.name}, four modes ({len(prompts)} prompts, {args.new_bytes} new bytes):")
    return failures + run_modes(backend, reference, prompts, args.new_bytes, _block(reference.config.block_sizes),
                                log)


def check_torch_cuda(bundle: Path, model, args, log, device: str = "cuda") -> list[str]:
    """fp32 torch graphs of `model` on `device` (TF32 off) vs the bundle's ONNX Runtime fp32 graphs (CPU EP).
    `model` must be the checkpoint the bundle was exported from."""
    import torch

    from fastblt.runtime.backends.ort import OrtBackend
    from fastblt.runtime.manifest import Manifest

    manifest = Manifest.load(bundle)
    if model.config != manifest.config:
        return [f"the checkpoint is not the one {bundle} was built from (configs differ); pass --checkpoint"]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backend = TorchCudaBackend(model, device)
    where = torch.cuda.get_device_name(0) if backend.device.type == "cuda" else str(backend.device)
    log(f"torch on {where} (fp32, TF32 off) vs ONNX Runtime fp32 (CPU EP), real-text calls:")
    return check_against(backend, OrtBackend(manifest, "fp32", layout="standard"), args, log)


def _torch_cuda() -> str | None:
    """The CUDA device torch sees, or None (no torch, a CPU build, or no usable GPU)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _header(log) -> None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        commit = "unknown"
    log(f"fastblt GPU check, {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}, "
        f"{platform.node()} ({platform.machine()}, Python {platform.python_version()}), commit {commit}")
    for key, value in versions().items():
        log(f"  {key}: {value}")


def parse_args(argv=None) -> argparse.Namespace:
    from fastblt.graphs import default_model_path

    p = argparse.ArgumentParser(prog="python -m fastblt.export.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path(".cache/bundle-default"), help="bundle from blt-export build")
    p.add_argument("--checkpoint", type=Path, default=default_model_path(),
                   help="checkpoint the bundle was built from (torch-on-CUDA fallback only)")
    p.add_argument("--precision", default="fp32,int8", help="engine precisions to build and check")
    p.add_argument("--opt-level", type=int, default=1, choices=range(6), help="TensorRT builder optimization level")
    p.add_argument("--workspace-mib", type=int, default=None,
                   help="cap on the builder's scratch GPU memory (Jetson: it shares memory with the CPU)")
    p.add_argument("--prompts", type=int, default=2, help="held-out prompts")
    p.add_argument("--prompt-bytes", type=int, default=96, help="bytes per prompt")
    p.add_argument("--new-bytes", type=int, default=64, help="bytes generated per prompt and mode")
    p.add_argument("--calls", type=int, default=24, help="real-text calls compared per graph")
    p.add_argument("--tol", type=float, default=1e-4,
                   help="fp32 tolerance: max|Δ| <= tol * max(1, max|reference|) per output (the export check uses "
                        "1e-5 CPU vs CPU; GPU kernels sum in another order)")
    p.add_argument("--margin", type=float, default=2.0,
                   help="quantized engines may also differ by margin x ONNX Runtime's own quantization error")
    args = p.parse_args(argv)
    if min(args.prompts, args.prompt_bytes, args.new_bytes, args.calls, args.workspace_mib or 1) < 1:
        p.error("--prompts, --prompt-bytes, --new-bytes, --calls and --workspace-mib must be >= 1")
    return args


def main(argv=None, log=print) -> int:
    args = parse_args(argv)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    _header(log)
    if not (args.bundle / "manifest.json").is_file():
        log(f"FAILED: {args.bundle} is not a bundle; build it first (`make .cache/bundle-default/manifest.json`)")
        return FAILED
    info, reason = probe()
    if info is not None:
        log(f"TensorRT {info.trt_version} on {info.gpu_name} (compute capability {info.compute_capability}"
            f"{', Jetson' if info.is_jetson else ''})")
        failures = check_tensorrt(args.bundle, precisions, info, args, log)
    elif importlib.util.find_spec("tensorrt") is not None:
        log(f"FAILED: tensorrt is installed but cannot run here: {reason}")
        return FAILED
    elif (gpu := _torch_cuda()) is not None:
        log(f"TensorRT is not installed ({reason}): checking the torch backend on CUDA ({gpu}) instead; no engines "
            "are built")
        from fastblt.graphs import load_model

        failures = check_torch_cuda(args.bundle, load_model(args.checkpoint), args, log)
    else:
        log(f"no usable NVIDIA GPU: TensorRT cannot run ({reason}) and torch sees no CUDA device; nothing to check")
        return NO_GPU
    for line in failures:
        log(f"FAILED: {line}")
    log("GPU check " + ("FAILED" if failures else "passed"))
    return FAILED if failures else 0


if __name__ == "__main__":
    sys.exit(main())
