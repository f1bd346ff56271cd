"""`blt-export build`: checkpoint → ONNX graphs → validation → quantized variants → (engines) → bundle.

Everything is written into a temporary directory next to the destination and swapped into place at the
end (graphs/atomic.py), so an interrupted or failed build never leaves a half-written bundle.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import gc
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from fastblt.export.onnx_export import (
    EXTERNAL_DATA_BYTES,
    OPSET,
    export_graph,
    external_data_files,
    share_weights,
    weight_bytes,
)
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
from fastblt.graphs.precisions import FUSED
from fastblt.graphs.precisions import precision as precision_info
from fastblt.graphs.spec import (
    FUSED_GRAPHS,
    FUSED_OPTIONAL,
    GRAPH_NAMES,
    PATCH_CAP,
    fused_graph_specs,
    graph_specs,
)
from fastblt.runtime.manifest import GraphFile, sha256_file, write_manifest

FUSED_PRECISIONS = FUSED  # the CPU precisions (graphs/precisions.py); TensorRT never reads the fused layout
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
    from fastblt.runtime.trt_device import check_precision, probe

    info, reason = probe()
    if info is None:
        if engines == "yes":
            raise BuildError(f"--engines yes needs an NVIDIA GPU with TensorRT, and none is usable here ({reason}); "
                             f"use --engines auto or no, or install TensorRT: {TRT_INSTALL}")
        return
    for p in precisions:
        if p not in ORT_ONLY:
            check_precision(p, info)


# what a user without TensorRT installs (docs/tensorrt.md, "What to install")
TRT_INSTALL = ("pip install 'fastblt[trt]' (CUDA 13, NVIDIA driver >= 580) or 'fastblt[trt-cu12]' (older drivers); "
               "on a Jetson, JetPack's TensorRT (docs/tensorrt.md)")


def require_engine_device(precisions: tuple[str, ...]):
    """`blt-export engine` builds on this machine's GPU: without one usable by TensorRT, one error with the reason
    and the install routes."""
    from fastblt.runtime.trt_device import check_precision, probe

    info, reason = probe()
    if info is None:
        raise BuildError(f"`blt-export engine` builds TensorRT engines on this machine's NVIDIA GPU, and none is "
                         f"usable here ({reason}); run it on the GPU that will run the engines, after installing "
                         f"TensorRT: {TRT_INSTALL}")
    for p in precisions:
        if p not in ORT_ONLY:
            check_precision(p, info)
    return info


def build_bundle(model, out: Path, precisions: tuple[str, ...] = ("fp32", "int8"),
                 block_sizes: tuple[int, ...] | None = None, engines: str = "auto", log=print,
                 heldout: list[list[int]] | None = None, fused: bool = True, bars: bool = False, *,
                 options: BuildOptions | None = None) -> Path:
    """Build a bundle; `log` gets one line per stage (or, with `bars`, a progress bar per stage on stderr),
    and what the libraries print goes to the bundle's build.log. `options` holds what matters at scale
    (hash-table storage, external data, memory; see BuildOptions)."""
    opts = options or BuildOptions()
    cfg = model.config
    block_sizes = tuple(cfg.block_sizes if block_sizes is None else block_sizes)
    missing = [b for b in block_sizes if b not in cfg.block_sizes]
    if missing:
        raise BuildError(f"block sizes {missing} were not trained; this model supports {list(cfg.block_sizes)}")
    check_request(precisions, engines)
    _check_table_request(model, opts)
    out = Path(out)
    t0 = time.perf_counter()
    with _disk_errors(out), atomic_dir(out) as tmp, _log_kept_on_failure(tmp, log):
        with BuildLog(tmp / BUILD_LOG, log, bars, out / BUILD_LOG) as blog:
            _build(model, tmp, precisions, block_sizes, engines, heldout, fused, blog, opts)
            _summary(tmp, blog, time.perf_counter() - t0)
    return out


@dataclass(frozen=True)
class BuildOptions:
    """What a large build needs beyond the defaults.

    `hash_table`: storage of the bundle's one hash-table file: "auto" (the checkpoint's dtype: `table_dtype`,
    else the model's), float32, bfloat16, float16, or int8 (one fp32 scale per row). `table_source`: where the
    table's rows come from when the model was loaded without them (meta device): `(rows, read)` with
    read(r0, r1) → float32 [r1-r0, D], e.g. a memory-mapped checkpoint. `external_bytes`: graphs with more
    weight bytes than this keep them in external data. `release_model`: once the torch stages are done, move the
    model's weights to the meta device (the caller's model is then unusable) so ONNX Runtime gets the memory.
    `calibration_prompts` / `heldout_windows`: how much real text calibration and the quality checks run
    (each window is 256 bytes; at BLT-1B scale a window costs seconds per backend)."""

    hash_table: str = "auto"
    table_dtype: str | None = None
    table_source: tuple[int, Callable[[int, int], np.ndarray]] | None = None
    external_bytes: int = EXTERNAL_DATA_BYTES
    fused_max_bytes: int | None = None
    release_model: bool = False
    calibration_prompts: int = 4
    heldout_windows: int = 16


def _check_table_request(model, opts: BuildOptions) -> None:
    from fastblt.runtime.hash_table import TABLE_DTYPES

    if opts.hash_table != "auto" and opts.hash_table not in TABLE_DTYPES:
        raise BuildError(f"--hash-table {opts.hash_table!r}; valid values are auto, {', '.join(TABLE_DTYPES)}")
    if model.encoder_hash_tok_embedding.weight.is_meta and opts.table_source is None:
        raise BuildError("the model's hash tables were not loaded (meta device) and no table_source was given; "
                         "load the checkpoint with its tables or pass where to stream them from")


def _build(model, tmp: Path, precisions, block_sizes, engines, heldout, fused, blog: BuildLog,
           opts: BuildOptions) -> None:
    from fastblt.export.calibration import greedy_texts, heldout_bpb, prompts_from, record
    from fastblt.graphs.incremental import build_graphs
    from fastblt.runtime.backends.ort import OrtBackend
    from fastblt.runtime.backends.torch_ref import TorchBackend

    cfg = model.config
    if heldout is None:
        from fastblt.graphs.training.data import heldout_windows

        heldout = heldout_windows(None, 256, opts.heldout_windows)
    prompts = prompts_from(heldout, 8)
    table_entry = _write_hash_table(model, tmp, opts, blog)
    torch_backend = TorchBackend(model, hash_table=_table_of(tmp, cfg, table_entry)
                                 if model.encoder_hash_tok_embedding.weight.is_meta else None)
    n_cal = min(opts.calibration_prompts, len(prompts))
    with blog.stage("calibration: real-text inputs", n_cal, "prompts") as bar:
        rec = record(torch_backend, prompts[:n_cal], progress=bar.update)
    _memory(blog, "calibration done")
    modules, specs = build_graphs(model), graph_specs(cfg)
    jobs = [(graph_key(graph, b), graph, modules[graph], specs[graph], b, rec.records.get(graph_key(graph, b), []))
            for graph in GRAPH_NAMES for b in (block_sizes if graph == "decoder_block" else (None,))]
    fused_jobs = []
    if fused:
        from fastblt.export.validate import draft_step_records, to_fused_feeds
        from fastblt.graphs.incremental.fused import build_fused_graphs

        fused_modules, fused_specs = build_fused_graphs(model), fused_graph_specs(cfg)
        real = {graph: [(to_fused_feeds(f), o) for f, o in rec.records.get(graph, [])] for graph in FUSED_GRAPHS}
        real["draft_step"] = draft_step_records(rec.records)
        fused_jobs = [(fused_key(graph), graph, fused_modules[graph], fused_specs[graph], None, real[graph])
                      for graph in (*FUSED_GRAPHS, *FUSED_OPTIONAL)]
    fused_max = opts.external_bytes if opts.fused_max_bytes is None else opts.fused_max_bytes
    entries, validation = _export_and_validate(tmp, cfg, jobs, fused_jobs, blog, opts.external_bytes, fused_max)
    del jobs, fused_jobs, modules
    _memory(blog, "export + validation done")
    _share(tmp / "fp32", entries, blog)
    model_dict = cfg.to_dict()
    if cfg.max_patch_length is None:  # one cap every backend enforces (graphs/spec.py PATCH_CAP)
        model_dict["max_patch_length"] = PATCH_CAP
        blog.say(f"the model has no max_patch_length: the bundle caps patches at {PATCH_CAP} bytes")
    manifest = {"created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "model": model_dict, "opset": OPSET, "block_sizes": list(block_sizes),
                "special_ids": {"boe": BOE, "bos": BOS, "eos": EOS, "mask": cfg.mask_id, "pad": cfg.pad_id},
                "patching": {"threshold": cfg.patch_threshold, "max_patch_length": model_dict["max_patch_length"]},
                "precisions": ["fp32"], "graphs": entries, "validation": validation,
                "quantization": {}, "engines": [], "tools": _versions(), "quality": {},
                "hash_table": table_entry}
    _register(tmp, manifest, "fp32")
    write_manifest(tmp, manifest)
    with blog.stage("held-out bits/byte: torch", len(heldout), "windows") as bar:
        quality = {"torch": {"heldout_bpb": heldout_bpb(torch_backend, heldout, progress=bar.update)}}
    torch_backend.close()
    del torch_backend
    if opts.release_model:
        model.to("meta")  # frees the weights; ONNX Runtime needs the memory from here on
        gc.collect()
    with blog.stage("held-out bits/byte: fp32", len(heldout) + len(prompts), "windows+prompts") as bar, \
            OrtBackend(tmp, "fp32") as fp32:
        quality["fp32"] = {"heldout_bpb": heldout_bpb(fp32, heldout, progress=bar.update)}
        reference = greedy_texts(fp32, prompts, progress=bar.update)
    _memory(blog, "fp32 done")
    add_precisions(tmp, manifest, [p for p in precisions if p != "fp32"], rec, heldout, prompts, quality, blog,
                   reference)
    manifest["quality"] = quality
    manifest["quality"]["heldout"] = {"windows": len(heldout), "bytes": sum(len(w) - 1 for w in heldout)}
    if engines != "no":
        _engines(tmp, manifest, precisions, block_sizes, blog)
    write_manifest(tmp, manifest)


def _export_and_validate(root: Path, cfg, jobs, fused_jobs, blog: BuildLog, external_bytes: int,
                         fused_max: int) -> tuple[dict, dict]:
    """Export and validate one graph at a time (standard layout, then the fused CPU layout) into fp32/, each
    against its torch module on sample inputs and on the recorded real-text calls. A fused graph whose standard
    twin holds more than `fused_max` weight bytes (BLT-1B's global model: 5.1 GB) is not written: the fused
    backend runs the standard one for that stack, so no weight is stored twice in one precision."""
    from fastblt.export.validate import validate_graph

    (root / "fp32").mkdir()
    entries, validation, external = {}, {}, set()
    with blog.stage("export + validation: ONNX graphs", len(jobs) + len(fused_jobs)) as bar:
        for key, graph, module, spec, b, real in [*jobs, *fused_jobs]:
            fused = key == fused_key(graph)
            needs = ("encoder", "decoder_step") if graph == "draft_step" else (graph,)
            if fused and external & set(needs):
                blog.say(f"{key}: not written (the standard {'/'.join(needs)} graph holds its weights; "
                         "no weight is stored twice)")
                bar.update()
                continue
            path = root / "fp32" / f"{key}.onnx"
            export_graph(module, spec, cfg, path, block_size=b, external_bytes=external_bytes)
            if not fused and sum(f.stat().st_size for f in [path, *external_data_files(path)]) > fused_max:
                external.add(graph)
            entries[key] = {"graph": graph, "block_size": b, "files": {}}
            if fused:
                entries[key]["layout"] = "fused"
            validation[key] = validate_graph(path, module, spec, cfg, real, b)
            gc.collect()
            if graph in external:
                _memory(blog, f"{key} exported and validated")
            bar.update()
    return entries, validation


def add_precisions(root: Path, manifest: dict, precisions, rec, heldout, prompts, quality: dict, blog,
                   reference: list[bytes]) -> None:
    """Quantize every graph of the bundle in `root` to each precision, calibrated on `rec`'s recorded inputs,
    and record held-out bits/byte and greedy agreement with FP32's continuations `reference` (both through ONNX
    Runtime; one backend open at a time)."""
    from fastblt.export.calibration import greedy_agreement, heldout_bpb
    from fastblt.runtime.backends.ort import OrtBackend

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
        _share(root / precision, {k: manifest["graphs"][k] for k in keys}, blog)
        _register(root, manifest, precision)
        write_manifest(root, manifest)
        if not precision_info(precision).cpu:  # bf16: no ONNX Runtime CPU kernels
            quality[precision] = _check_widened(root, manifest, keys, precision, rec, blog)
        else:
            with blog.stage(f"held-out bits/byte: {precision}", len(heldout) + len(prompts),
                            "windows+prompts") as bar, OrtBackend(root, precision) as backend:
                quality[precision] = {"heldout_bpb": heldout_bpb(backend, heldout, progress=bar.update),
                                      "greedy_agreement_vs_fp32": greedy_agreement(reference, backend, prompts,
                                                                                   progress=bar.update)}
        _memory(blog, f"{precision} done")
        manifest["quantization"][precision] = info


def _check_widened(root: Path, manifest: dict, keys: list[str], precision: str, rec, blog) -> dict:
    """A precision this CPU cannot run (bf16) is checked through its widened copy (export/half.widen_bf16: the
    same graph in float32 holding exactly the rounded weights) against fp32 on the recorded real-text calls:
    the graph's structure and its weights, not its half activations (`blt-bench precision` measures those
    through torch)."""
    import onnxruntime as ort

    from fastblt.export.half import widen_bf16

    worst: dict[str, float] = {}
    with blog.stage(f"widened check: {precision} (no CPU kernels)", len(keys)) as bar, \
            tempfile.TemporaryDirectory(dir=root) as tmp:
        for key in keys:
            feeds = [f for f, _ in rec.records.get(key, [])][:4]
            if not feeds or manifest["graphs"][key].get("layout", "standard") != "standard":
                bar.update()
                continue
            wide = widen_bf16(root / precision / f"{key}.onnx", Path(tmp) / f"{key}.onnx")
            ref = ort.InferenceSession(str(root / "fp32" / f"{key}.onnx"), providers=["CPUExecutionProvider"])
            got = ort.InferenceSession(str(wide), providers=["CPUExecutionProvider"])
            worst[key] = max(float(np.abs(a - b).max()) for f in feeds
                             for a, b in zip(ref.run(None, f), got.run(None, f), strict=True) if a.size)
            del ref, got
            bar.update()
    blog.say(f"{precision}: widened graphs against fp32, max |Δ| per graph: "
             + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
    return {"heldout_bpb": None, "widened_max_abs_diff_vs_fp32": worst,
            "note": f"ONNX Runtime's CPU provider has no {precision} kernels: checked through the widened graphs "
                    "(rounded weights, fp32 activations); `blt-bench precision` measures held-out bits/byte "
                    "through torch"}


def quantize_bundle(bundle: Path, precisions: tuple[str, ...], log=print, bars: bool = False,
                    heldout_windows: int = 16, calibration_prompts: int = 4) -> Path:
    """Add precisions to an existing bundle (calibrated through its own FP32 graphs; no torch). Real-text calls
    are recorded only when a precision needs them (int8, fp8 calibration; the widened bf16 check): fp16, int4
    and int8-dynamic are made from the weights alone, which at BLT-1B scale saves minutes of fp32 generation."""
    from fastblt.export.calibration import greedy_texts, prompts_from, record
    from fastblt.graphs.training.data import heldout_windows as windows
    from fastblt.runtime.backends.ort import OrtBackend
    from fastblt.runtime.manifest import Manifest

    check_request(("fp32", *precisions), "no")
    bundle = Path(bundle)
    manifest = Manifest.load(bundle).to_dict()  # the working copy the stages add to; written back through the schema
    with atomic_dir(bundle, start_from_existing=True) as tmp, _log_kept_on_failure(tmp, log):
        with BuildLog(tmp / BUILD_LOG, log, bars, bundle / BUILD_LOG) as blog:
            heldout = windows(None, 256, heldout_windows)
            prompts = prompts_from(heldout, 8)
            n_cal = calibration_prompts if any(precision_info(p).calibrated or not precision_info(p).cpu
                                               for p in precisions) else 0
            with blog.stage("calibration: real-text inputs", n_cal + len(prompts), "prompts") as bar, \
                    OrtBackend(tmp, "fp32", layout="standard") as fp32:  # records the standard graphs' inputs
                rec = record(fp32, prompts[:n_cal], progress=bar.update)
                reference = greedy_texts(fp32, prompts, progress=bar.update)
            quality = manifest.setdefault("quality", {})
            add_precisions(tmp, manifest, list(precisions), rec, heldout, prompts, quality, blog, reference)
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


HASH_TABLE_DIR = "hash_table"


def _write_hash_table(model, root: Path, opts: BuildOptions, blog: BuildLog) -> dict:
    """Write the model's hash n-gram tables once per bundle (hash_table/tables.<dtype>.bin, row-major,
    plus per-row scales for int8), streamed a chunk of rows at a time and hashed as they are written."""
    from fastblt.runtime.hash_table import array_chunks, source_chunks, write_table

    cfg = model.config
    weight = model.encoder_hash_tok_embedding.weight
    rows, dim = cfg.n_hash_tables * cfg.hash_vocab, cfg.encoder.dim
    dtype = opts.hash_table
    if dtype == "auto":
        dtype = opts.table_dtype or {"torch.bfloat16": "bfloat16", "torch.float16": "float16"}.get(
            str(weight.dtype), "float32")
    if opts.table_source is not None:
        n, read = opts.table_source
        if n != rows:
            raise BuildError(f"the hash-table source has {n} rows; the config implies {rows}")
        chunks = source_chunks(read, rows)
    else:
        chunks = array_chunks(weight.detach().float().numpy())
    folder = root / HASH_TABLE_DIR
    folder.mkdir()
    data, scales = folder / f"tables.{dtype}.bin", folder / "scales.float32.bin"
    with blog.stage(f"hash tables: {rows:,} rows × {dim} ({dtype})", 1, "file") as bar:
        written = write_table(data, chunks, dtype, scales if dtype == "int8" else None)
        bar.update()
    entry = {"rows": rows, "dim": dim, "dtype": dtype,
             "data": {"path": f"{HASH_TABLE_DIR}/{data.name}", **written["data"]}}
    if "scales" in written:
        entry["scales"] = {"path": f"{HASH_TABLE_DIR}/{scales.name}", **written["scales"]}
    return entry


def _table_of(root: Path, cfg, entry: dict):
    from fastblt.runtime.hash_table import HashTable, TableLayout

    scales = root / entry["scales"]["path"] if "scales" in entry else None
    layout = TableLayout(entry["rows"], entry["dim"], entry["dtype"])
    return HashTable.open(root / entry["data"]["path"], layout, scales)


def _memory(blog: BuildLog, when: str) -> None:
    """Resident memory now and at peak so far, so the stage that sets a large build's peak shows in its log."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        now = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        now = 0
    blog.say(f"memory after {when}: RSS {now / 1e9:.2f} GB, peak {peak / 1e9:.2f} GB")


def _summary(root: Path, blog: BuildLog, seconds: float) -> None:
    """The build's cost: wall time, peak RSS of this process, and the bundle's bytes on disk per folder."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    sizes: dict[str, int] = {}
    for f in root.rglob("*"):
        if f.is_file():
            top = f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else "."
            sizes[top] = sizes.get(top, 0) + f.stat().st_size
    parts = ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sorted(sizes.items()))
    blog.say(f"built in {seconds:.0f} s, peak RSS {peak / 1e9:.2f} GB; on disk {sum(sizes.values()) / 1e9:.2f} GB "
             f"({parts})")


@contextlib.contextmanager
def _disk_errors(out: Path):
    """A full disk is a clear error (the half-written temporary bundle is already removed), not a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(out.parent if out.parent.exists() else Path.cwd()).free
            raise BuildError(f"the disk filled while writing {out} ({exc.strerror}); nothing was written. Free "
                             f"space ({free / 1e9:.1f} GB free now; docs/scale.md lists a bundle's size per "
                             "precision) or write the bundle to a larger disk") from None
        raise


def _has_precision(entry: dict, precision: str) -> bool:
    return _standard(entry) or precision in FUSED_PRECISIONS


def _standard(entry: dict) -> bool:
    return entry.get("layout", "standard") == "standard"


def _share(folder: Path, keys, blog: BuildLog) -> None:
    """One weights.data per precision folder: no weight stored twice (onnx_export.share_weights)."""
    paths = [folder / f"{key}.onnx" for key in keys]
    before = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    with blog.stage(f"shared weights: {folder.name}", 1, "folder") as bar:
        share_weights(folder, paths)
        bar.update()
    after = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    blog.say(f"{folder.name}: {before / 1e9:.2f} GB of graphs → {after / 1e9:.2f} GB with each weight stored once")


def _register(root: Path, manifest: dict, precision: str) -> None:
    """List every graph file of `precision` with its external-data files, each with sha256 and size (a file
    several graphs share is hashed once)."""
    digests: dict[Path, str] = {}
    for key, entry in manifest["graphs"].items():
        if not _has_precision(entry, precision):
            continue
        path = root / precision / f"{key}.onnx"
        record = {"path": f"{precision}/{key}.onnx", "sha256": sha256_file(path), "bytes": path.stat().st_size,
                  "weight_bytes": weight_bytes(path)}
        data = external_data_files(path)
        if data:
            record["data"] = [{"path": d.relative_to(root).as_posix(),
                               "sha256": digests[d] if d in digests else digests.setdefault(d, sha256_file(d)),
                               "bytes": d.stat().st_size} for d in data]
        entry["files"][precision] = record
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
                gfile = GraphFile.from_dict(entry["files"][precision], key)
                record = build_engine(root / gfile.path, cfg_specs[entry["graph"]], ranges, precision, root / "engines",
                                      info, root / "engines" / "timing.cache", onnx_digest=gfile.digest)
                record["graph_key"], record["path"] = key, f"engines/{record['path']}"
                manifest["engines"].append(record)
                bar.update()


def manifest_config(manifest: dict):
    from fastblt.graphs.config import BltConfig

    return BltConfig.from_dict(manifest["model"])


def engine_bundle(bundle: Path, precisions: tuple[str, ...], log=print, bars: bool = False) -> Path:
    """Build TensorRT engines into an existing bundle (on the target GPU); replaces older engines."""
    from fastblt.runtime.manifest import Manifest

    check_request(("fp32", *precisions) if "fp32" not in precisions else precisions, "no")
    require_engine_device(precisions)
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
