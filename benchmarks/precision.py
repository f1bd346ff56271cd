"""`blt-bench precision`: what each precision costs in quality, bytes and speed on one bundle, side by side.

For every precision of the bundle that ONNX Runtime's CPU provider runs: held-out bits/byte on the same windows
as fp32, greedy BLT-S (k=16) and BLT-DV (B=8) against AR on real prompts, bytes on disk and AR bytes/s. bf16
(no CPU kernels) is measured through the torch reference in bfloat16 against the same reference in fp32.
Then the choices behind fp16 and int4, each measured: fp16 with one fp32 island at a time turned off
(export/half.py), and int4 at each MatMulNBits block size and accuracy level. Variants are built in a
temporary copy of the bundle (hard links to its fp32 graphs and hash table) and removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

GREEDY_MODES = (("blts", {"draft_k": 16}), ("bltdv", {"block_size": 8}))


def _prompts_and_windows(windows: int, prompts: int):
    from fastblt.export.calibration import prompts_from
    from fastblt.graphs.training.data import heldout_windows

    for per_doc in (2, 4, 8, 16, 32):  # evenly spaced windows from each held-out document, as many as asked
        heldout = heldout_windows(None, 256, windows, per_doc=per_doc)
        if len(heldout) >= windows:
            break
    return heldout, prompts_from(heldout, prompts)


def measure(backend, heldout, prompts, new_bytes: int, speed_prompt: str, speed_bytes: int) -> dict:
    """Held-out bits/byte, greedy identity of the verification modes, and AR bytes/s of one backend."""
    from fastblt.export.calibration import heldout_bpb
    from fastblt.runtime.generator import Generator

    gen = Generator(backend)
    cfg = backend.config
    t0 = time.perf_counter()
    bpb = heldout_bpb(backend, heldout)
    bpb_s = time.perf_counter() - t0
    equal = {mode: 0 for mode, _ in GREEDY_MODES}
    for prompt in prompts:
        ar = gen.generate(prompt, mode="ar", max_new_bytes=new_bytes).bytes
        for mode, options in GREEDY_MODES:
            if mode == "bltdv" and not cfg.block_sizes:
                continue
            equal[mode] += gen.generate(prompt, mode=mode, max_new_bytes=new_bytes, **options).bytes == ar
    speed = [gen.generate(speed_prompt, mode="ar", max_new_bytes=speed_bytes).bytes_per_s for _ in range(2)]
    return {"heldout_bpb": round(bpb, 5), "bpb_seconds": round(bpb_s, 1),
            "greedy_equal_to_ar": {m: f"{n}/{len(prompts)}" for m, n in equal.items()},
            "greedy_all_equal": all(n == len(prompts) for n in equal.values()),
            "ar_bytes_per_s": round(max(speed), 2)}


def _folder_bytes(root: Path, precision: str) -> int:
    from fastblt.runtime.manifest import Manifest

    manifest = Manifest.load(root)
    seen, total = set(), 0
    for entry in manifest.graphs.values():
        gf = entry.files.get(precision)
        if gf is None:
            continue
        for f in gf.all_files:
            if f.path not in seen:
                seen.add(f.path)
                total += f.bytes
    return total


def variant(bundle: Path, precision: str, make, work: Path) -> Path:
    """A copy of `bundle` (hard links; external data copied) holding fp32 and one `precision`, made by
    make(src, dst) per graph."""
    from fastblt.export.bundle import _has_precision, _register
    from fastblt.runtime.manifest import Manifest, write_manifest

    root = work / f"variant-{len(list(work.iterdir()))}"
    root.mkdir()
    manifest = Manifest.load(bundle).to_dict()
    for sub in ("fp32", "hash_table"):
        (root / sub).mkdir()
        for f in (bundle / sub).iterdir():  # onnx refuses hard-linked external data: those files are copied
            (shutil.copyfile if f.name.endswith(".data") else os.link)(f, root / sub / f.name)
    for entry in manifest["graphs"].values():
        entry["files"] = {"fp32": entry["files"]["fp32"]}
    manifest.update(precisions=["fp32"], engines=[], quantization={})
    (root / precision).mkdir()
    for key, entry in manifest["graphs"].items():
        if _has_precision(entry, precision):
            make(root / "fp32" / f"{key}.onnx", root / precision / f"{key}.onnx")
    _register(root, manifest, precision)
    write_manifest(root, manifest)
    return root


def run_precision(bundle: str, checkpoint: str | None, windows: int, prompts: int, new_bytes: int,
                  int4_blocks: tuple[int, ...], ablations: bool, log=print) -> dict:
    from fastblt.export.half import ISLANDS, convert_half
    from fastblt.export.quantize import ACCURACY_LEVEL, INT4_BLOCK, quantize_ort_dynamic
    from fastblt.graphs.precisions import PRECISIONS
    from fastblt.runtime.backends.ort import OrtBackend
    from fastblt.runtime.backends.torch_ref import TorchBackend
    from fastblt.runtime.manifest import Manifest

    root = Path(bundle)
    manifest = Manifest.load(root)
    heldout, texts = _prompts_and_windows(windows, prompts)
    speed_prompt = texts[0]
    args = (heldout, texts, new_bytes, speed_prompt, 64)
    out: dict = {"bundle": str(root), "windows": len(heldout), "prompts": len(texts), "new_bytes": new_bytes,
                 "precisions": {}, "torch": {}, "fp16_islands": {}, "int4": {}}
    for p in manifest.precisions:
        if not PRECISIONS.get(p) or not PRECISIONS[p].cpu:
            continue
        log(f"{p}: held-out bits/byte on {len(heldout)} windows, greedy modes on {len(texts)} prompts")
        with OrtBackend(root, p) as backend:
            out["precisions"][p] = measure(backend, *args) | {"bytes_on_disk": _folder_bytes(root, p),
                                                              "layout": backend.layout}
    ref = out["precisions"].get("fp32", {}).get("heldout_bpb")
    for row in out["precisions"].values():
        row["delta_bpb_vs_fp32"] = None if ref is None else round(row["heldout_bpb"] - ref, 5)
    source = checkpoint or str(Path(__file__).resolve().parents[1] / "graphs" / "default_model")
    for dtype in ("float32", "bfloat16"):
        log(f"torch {dtype}: held-out bits/byte, greedy modes")
        with TorchBackend(source, dtype=dtype) as backend:
            out["torch"][dtype] = measure(backend, *args)
    out["torch"]["bfloat16"]["delta_bpb_vs_float32"] = round(out["torch"]["bfloat16"]["heldout_bpb"]
                                                             - out["torch"]["float32"]["heldout_bpb"], 5)
    if not ablations:
        return out
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".precision-") as tmp:
        work = Path(tmp)
        for dropped in ("none", *ISLANDS):
            kept = tuple(i for i in ISLANDS if i != dropped)
            log(f"fp16 with fp32 islands {list(kept)}")
            vroot = None
            try:
                vroot = variant(root, "fp16", lambda s, d, kept=kept: convert_half(s, d, "fp16", kept), work)
                with OrtBackend(vroot, "fp16") as backend:
                    row = measure(backend, *args)
            except Exception as exc:  # an ablation that cannot run is a result, not a crash
                row = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            finally:
                if vroot is not None:
                    shutil.rmtree(vroot, ignore_errors=True)
            if ref is not None and "heldout_bpb" in row:
                row["delta_bpb_vs_fp32"] = round(row["heldout_bpb"] - ref, 5)
            out["fp16_islands"][f"without {dropped}" if dropped != "none" else "all islands"] = row
        for block in int4_blocks:
            for level in (ACCURACY_LEVEL, 0) if block == INT4_BLOCK else (ACCURACY_LEVEL,):
                log(f"int4 block {block}, accuracy level {level}")
                vroot = variant(root, "int4", lambda s, d, b=block, a=level:
                                quantize_ort_dynamic(s, d, bits=4, block=b, accuracy_level=a), work)
                with OrtBackend(vroot, "int4") as backend:
                    row = measure(backend, *args) | {"bytes_on_disk": _folder_bytes(vroot, "int4")}
                if ref is not None:
                    row["delta_bpb_vs_fp32"] = round(row["heldout_bpb"] - ref, 5)
                out["int4"][f"block {block}, accuracy {level}"] = row
                shutil.rmtree(vroot, ignore_errors=True)
    return out


def markdown(results: dict, machine_line: str) -> str:
    """The tables docs/scale.md and the README quote (generated: never edited by hand)."""
    lines = [f"Measured by `blt-bench precision` on {machine_line}: {results['windows']} held-out windows of "
             f"256 bytes, greedy BLT-S (k=16) and BLT-DV (B=8) against AR on {results['prompts']} prompts "
             f"× {results['new_bytes']} bytes, AR bytes/s on one prompt (best of 2; the variants' graphs are not "
             "deduplicated, so their bytes on disk include the fused twins).", "",
             "| precision | measured through | held-out bits/byte | Δ vs fp32 | greedy BLT-S = AR | greedy BLT-DV = AR "
             "| graphs on disk | AR bytes/s |", "|---|---|---|---|---|---|---|---|"]
    for p, row in results["precisions"].items():
        lines.append(f"| {p} | ONNX Runtime CPU ({row['layout']}) | {row['heldout_bpb']:.4f} | "
                     f"{row['delta_bpb_vs_fp32']:+.4f} | {row['greedy_equal_to_ar']['blts']} | "
                     f"{row['greedy_equal_to_ar']['bltdv']} | {row['bytes_on_disk'] / 1e6:.1f} MB | "
                     f"{row['ar_bytes_per_s']:.1f} |")
    t = results["torch"]
    for dtype, label, how in (("float32", "fp32", "torch float32 (the bf16 row's reference)"),
                              ("bfloat16", "bf16", "torch bfloat16 (ORT's CPU provider has no bf16 kernels)")):
        row = t[dtype]
        delta = row.get("delta_bpb_vs_float32")
        lines.append(f"| {label} | {how} | {row['heldout_bpb']:.4f} | "
                     f"{'–' if delta is None else f'{delta:+.4f} vs torch fp32'} | {row['greedy_equal_to_ar']['blts']} "
                     f"| {row['greedy_equal_to_ar']['bltdv']} | – | – |")
    if results["fp16_islands"]:
        lines += ["", "fp16, each fp32 island measured (export/half.py):", "",
                  "| fp16 variant | held-out bits/byte | Δ vs fp32 | greedy BLT-S / BLT-DV = AR |", "|---|---|---|---|"]
        for name, row in results["fp16_islands"].items():
            if "error" in row:
                lines.append(f"| {name} | fails: {row['error'][:120]} | | |")
                continue
            g = row["greedy_equal_to_ar"]
            lines.append(f"| {name} | {row['heldout_bpb']:.4f} | {row['delta_bpb_vs_fp32']:+.4f} | "
                         f"{g['blts']} / {g['bltdv']} |")
    if results["int4"]:
        lines += ["", "int4 (MatMulNBits), block size and accuracy level:", "",
                  "| int4 variant | held-out bits/byte | Δ vs fp32 | graphs on disk | AR bytes/s |",
                  "|---|---|---|---|---|"]
        for name, row in results["int4"].items():
            lines.append(f"| {name} | {row['heldout_bpb']:.4f} | {row['delta_bpb_vs_fp32']:+.4f} | "
                         f"{row['bytes_on_disk'] / 1e6:.2f} MB | {row['ar_bytes_per_s']:.1f} |")
    return "\n".join(lines) + "\n"
