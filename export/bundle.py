"""`blt-export build`: checkpoint → ONNX graphs → validation → quantized variants → (engines) → bundle.

Everything is written into a temporary directory next to the destination and swapped into place at the
end (graphs/atomic.py), so an interrupted or failed build never leaves a half-written bundle.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from fastblt.export.onnx_export import OPSET, export_graph
from fastblt.export.progress import BuildLog
from fastblt.export.quantize import (
    MODELOPT_HINT,
    ORT_ONLY,
    PRECISIONS,
    QuantizeError,
    modelopt_available,
    quantize_graph,
)
from fastblt.graphs.atomic import atomic_dir
from fastblt.graphs.constants import BOE, BOS, EOS, fused_key, graph_key
from fastblt.graphs.spec import FUSED_GRAPHS, FUSED_OPTIONAL, GRAPH_NAMES, fused_graph_specs, graph_specs
from fastblt.runtime.manifest import sha256_file, write_manifest

FUSED_PRECISIONS = ("fp32", "int8-dynamic")  # the CPU precisions; TensorRT never reads the fused layout
BUILD_LOG = "build.log"  # what the exporter, quantizers and ONNX Runtime printed, in the bundle


class BuildError(RuntimeError):
    """The build cannot proceed; nothing was written."""


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("fastblt", "torch", "onnx", "onnxscript", "onnxruntime", "nvidia-modelopt", "tensorrt"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def check_request(precisions: tuple[str, ...], engines: str) -> None:
    """Refuse what cannot be built here before any work starts."""
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or "fp32" not in precisions:
        raise BuildError(f"precisions {list(precisions)}: each must be one of {list(PRECISIONS)} and fp32 is always "
                         "built (the reference the others are checked against)")
    if "fp8" in precisions and not modelopt_available():
        raise QuantizeError(f"--precision fp8 needs NVIDIA ModelOpt: {MODELOPT_HINT}")
    if engines not in ("auto", "yes", "no"):
        raise BuildError(f"--engines {engines!r}; valid values are auto, yes, no")
    if engines == "no":
        return
    from fastblt.runtime.trt_device import check_precision, device_info

    info = device_info()
    if info is None:
        if engines == "yes":
            raise BuildError("--engines yes needs an NVIDIA GPU with TensorRT (none found); use --engines auto or no")
        return
    for p in precisions:
        if p not in ORT_ONLY:
            check_precision(p, info)


def build_bundle(model, out: Path, precisions: tuple[str, ...] = ("fp32", "int8"),
                 block_sizes: tuple[int, ...] | None = None, engines: str = "auto", log=print,
                 heldout: list[list[int]] | None = None, fused: bool = True, bars: bool = False) -> Path:
    """Build a bundle; `log` gets one line per stage (or, with `bars`, a progress bar per stage on stderr),
    and what the libraries print goes to the bundle's build.log."""
    cfg = model.config
    block_sizes = tuple(cfg.block_sizes if block_sizes is None else block_sizes)
    missing = [b for b in block_sizes if b not in cfg.block_sizes]
    if missing:
        raise BuildError(f"block sizes {missing} were not trained; this model supports {list(cfg.block_sizes)}")
    check_request(precisions, engines)
    out = Path(out)
    with atomic_dir(out) as tmp, _log_kept_on_failure(tmp, log):
        with BuildLog(tmp / BUILD_LOG, log, bars, out / BUILD_LOG) as blog:
            _build(model, tmp, precisions, block_sizes, engines, heldout, fused, blog)
    return out


def _build(model, tmp: Path, precisions, block_sizes, engines, heldout, fused, blog: BuildLog) -> None:
    from fastblt.export.calibration import heldout_bpb, prompts_from, record
    from fastblt.graphs.incremental import build_graphs
    from fastblt.runtime.backends.ort import OrtBackend
    from fastblt.runtime.backends.torch_ref import TorchBackend

    cfg = model.config
    if heldout is None:
        from fastblt.graphs.training.data import heldout_windows

        heldout = heldout_windows(None, 256, 16)
    prompts = prompts_from(heldout, 8)
    torch_backend = TorchBackend(model)
    with blog.stage("calibration: real-text inputs", 4, "prompts") as bar:
        rec = record(torch_backend, prompts[:4], progress=bar.update)
    modules, specs = build_graphs(model), graph_specs(cfg)
    jobs = [(graph_key(graph, b), graph, modules[graph], specs[graph], b, rec.records.get(graph_key(graph, b), []))
            for graph in GRAPH_NAMES for b in (block_sizes if graph == "decoder_block" else (None,))]
    if fused:
        from fastblt.export.validate import draft_step_records, to_fused_feeds
        from fastblt.graphs.incremental.fused import build_fused_graphs

        fused_modules, fused_specs = build_fused_graphs(model), fused_graph_specs(cfg)
        real = {graph: [(to_fused_feeds(f), o) for f, o in rec.records.get(graph, [])] for graph in FUSED_GRAPHS}
        real["draft_step"] = draft_step_records(rec.records)
        jobs += [(fused_key(graph), graph, fused_modules[graph], fused_specs[graph], None, real[graph])
                 for graph in (*FUSED_GRAPHS, *FUSED_OPTIONAL)]
    entries, validation = _export_and_validate(tmp, cfg, jobs, blog)
    manifest = {"created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "model": cfg.to_dict(), "opset": OPSET, "block_sizes": list(block_sizes),
                "special_ids": {"boe": BOE, "bos": BOS, "eos": EOS, "mask": cfg.mask_id, "pad": cfg.pad_id},
                "patching": {"threshold": cfg.patch_threshold, "max_patch_length": cfg.max_patch_length},
                "precisions": ["fp32"], "graphs": entries, "validation": validation,
                "quantization": {}, "engines": [], "tools": _versions()}
    _register(tmp, manifest, "fp32")
    write_manifest(tmp, manifest)
    with blog.stage("held-out bits/byte: fp32, torch", 2 * len(heldout), "windows") as bar:
        quality = {"fp32": {"heldout_bpb": heldout_bpb(OrtBackend(tmp, "fp32"), heldout, progress=bar.update)},
                   "torch": {"heldout_bpb": heldout_bpb(torch_backend, heldout, progress=bar.update)}}
    add_precisions(tmp, manifest, [p for p in precisions if p != "fp32"], rec, heldout, prompts, quality, blog)
    manifest["quality"] = quality
    manifest["quality"]["heldout"] = {"windows": len(heldout), "bytes": sum(len(w) - 1 for w in heldout)}
    if engines != "no":
        _engines(tmp, manifest, precisions, block_sizes, blog)
    write_manifest(tmp, manifest)


def _export_and_validate(root: Path, cfg, jobs, blog: BuildLog) -> tuple[dict, dict]:
    """Export every graph (standard layout, then the fused CPU layout) into fp32/, then validate each against
    its torch module on sample inputs and on the recorded real-text calls (converted to the fused layout)."""
    from fastblt.export.validate import validate_graph

    (root / "fp32").mkdir()
    entries, validation = {}, {}
    with blog.stage("export: ONNX graphs", len(jobs)) as bar:
        for key, graph, module, spec, b, _ in jobs:
            export_graph(module, spec, cfg, root / "fp32" / f"{key}.onnx", block_size=b)
            entries[key] = {"graph": graph, "block_size": b, "files": {}}
            if key == fused_key(graph):
                entries[key]["layout"] = "fused"
            bar.update()
    with blog.stage("validation: ONNX Runtime vs torch", len(jobs)) as bar:
        for key, _, module, spec, b, real in jobs:
            validation[key] = validate_graph(root / "fp32" / f"{key}.onnx", module, spec, cfg, real, b)
            bar.update()
    return entries, validation


def add_precisions(root: Path, manifest: dict, precisions, rec, heldout, prompts, quality: dict, blog) -> None:
    """Quantize every graph of the bundle in `root` to each precision, calibrated on `rec`'s recorded inputs,
    and record held-out bits/byte and greedy agreement with FP32 (both through ONNX Runtime)."""
    from fastblt.export.calibration import greedy_agreement, heldout_bpb
    from fastblt.runtime.backends.ort import OrtBackend

    reference = OrtBackend(root, "fp32")
    for precision in precisions:
        (root / precision).mkdir(exist_ok=True)
        info = {}
        keys = [k for k, e in manifest["graphs"].items() if _has_precision(e, precision)]
        with blog.stage(f"quantization: {precision}", len(keys)) as bar:
            for key in keys:
                feeds = [f for f, _ in rec.records.get(key, [])]
                info[key] = quantize_graph(root / "fp32" / f"{key}.onnx", root / precision / f"{key}.onnx",
                                           precision, feeds)
                bar.update()
        _register(root, manifest, precision)
        write_manifest(root, manifest)
        backend = OrtBackend(root, precision)
        with blog.stage(f"held-out bits/byte: {precision}", len(heldout) + len(prompts), "windows+prompts") as bar:
            quality[precision] = {"heldout_bpb": heldout_bpb(backend, heldout, progress=bar.update),
                                  "greedy_agreement_vs_fp32": greedy_agreement(reference, backend, prompts,
                                                                               progress=bar.update)}
        manifest["quantization"][precision] = info


def quantize_bundle(bundle: Path, precisions: tuple[str, ...], log=print, bars: bool = False) -> Path:
    """Add quantized precisions to an existing bundle (calibrated through its own FP32 graphs; no torch)."""
    from fastblt.export.calibration import prompts_from, record
    from fastblt.graphs.training.data import heldout_windows
    from fastblt.runtime.backends.ort import OrtBackend
    from fastblt.runtime.manifest import Manifest

    check_request(("fp32", *precisions), "no")
    bundle = Path(bundle)
    manifest = Manifest.load(bundle).to_dict()  # the working copy the stages add to; written back through the schema
    with atomic_dir(bundle, start_from_existing=True) as tmp, _log_kept_on_failure(tmp, log):
        with BuildLog(tmp / BUILD_LOG, log, bars, bundle / BUILD_LOG) as blog:
            heldout = heldout_windows(None, 256, 16)
            prompts = prompts_from(heldout, 8)
            with blog.stage("calibration: real-text inputs", 4, "prompts") as bar:
                rec = record(OrtBackend(tmp, "fp32"), prompts[:4], progress=bar.update)
            quality = manifest.setdefault("quality", {})
            add_precisions(tmp, manifest, list(precisions), rec, heldout, prompts, quality, blog)
            write_manifest(tmp, manifest)
    return bundle


@contextlib.contextmanager
def _log_kept_on_failure(tmp: Path, log):
    """A failed build leaves no bundle behind, but its library output is kept for the bug report."""
    try:
        yield
    except Exception:
        src = tmp / BUILD_LOG
        if src.is_file():
            fd, kept = tempfile.mkstemp(prefix="fastblt-build-", suffix=".log")
            os.close(fd)
            shutil.copyfile(src, kept)
            log(f"library output of the failed build: {kept}")
        raise


def _has_precision(entry: dict, precision: str) -> bool:
    return _standard(entry) or precision in FUSED_PRECISIONS


def _standard(entry: dict) -> bool:
    return entry.get("layout", "standard") == "standard"


def _register(root: Path, manifest: dict, precision: str) -> None:
    for key, entry in manifest["graphs"].items():
        if not _has_precision(entry, precision):
            continue
        path = root / precision / f"{key}.onnx"
        entry["files"][precision] = {"path": f"{precision}/{key}.onnx", "sha256": sha256_file(path),
                                     "bytes": path.stat().st_size}
    if precision not in manifest["precisions"]:
        manifest["precisions"].append(precision)


def _engines(root: Path, manifest: dict, precisions, block_sizes, blog: BuildLog) -> None:
    from fastblt.export.trt_build import build_engine
    from fastblt.graphs.spec import dim_ranges
    from fastblt.runtime.trt_device import device_info

    info = device_info()
    if info is None:
        blog.say("no NVIDIA GPU with TensorRT here: skipping engines (build them on the target with "
                 "`blt-export engine`)")
        return
    cfg_specs = graph_specs(manifest_config(manifest))
    (root / "engines").mkdir(exist_ok=True)
    for precision in precisions:
        if precision in ORT_ONLY:
            blog.say(f"{precision} is an ONNX Runtime CPU precision: no TensorRT engines for it")
            continue
        keys = [k for k, e in manifest["graphs"].items() if _standard(e)]
        with blog.stage(f"TensorRT engines: {precision} ({info.gpu_name})", len(keys)) as bar:
            for key in keys:
                entry = manifest["graphs"][key]
                ranges = dim_ranges(manifest_config(manifest), entry["block_size"])
                record = build_engine(root / entry["files"][precision]["path"], cfg_specs[entry["graph"]], ranges,
                                      precision, root / "engines", info, root / "engines" / "timing.cache")
                record["graph_key"], record["path"] = key, f"engines/{record['path']}"
                manifest["engines"].append(record)
                bar.update()


def manifest_config(manifest: dict):
    from fastblt.graphs.config import BltConfig

    return BltConfig.from_dict(manifest["model"])


def engine_bundle(bundle: Path, precisions: tuple[str, ...], log=print, bars: bool = False) -> Path:
    """Build TensorRT engines into an existing bundle (on the target GPU); replaces older engines."""
    from fastblt.runtime.manifest import Manifest

    check_request(("fp32", *precisions) if "fp32" not in precisions else precisions, "yes")
    bundle = Path(bundle)
    manifest = Manifest.load(bundle).to_dict()
    missing = [p for p in precisions if p not in manifest["precisions"]]
    if missing:
        raise BuildError(f"{bundle}: no {missing} graphs to build engines from; run `blt-export quantize` first")
    manifest["engines"] = [e for e in manifest.get("engines", []) if e["precision"] not in precisions]
    with atomic_dir(bundle, start_from_existing=True) as tmp, _log_kept_on_failure(tmp, log):
        with BuildLog(tmp / BUILD_LOG, log, bars, bundle / BUILD_LOG) as blog:
            _engines(tmp, manifest, precisions, manifest["block_sizes"], blog)
            write_manifest(tmp, manifest)
    return bundle
