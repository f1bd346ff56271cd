"""ONNX Runtime vs the torch reference, per graph and per output, on sample and real-text inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastblt.export.onnx_export import sample_feeds
from fastblt.graphs.spec import SECOND_CACHE

SAMPLE_SIZES = ({"b": 1, "t": 1, "P": 1, "L": 1, "T": 0, "C": 4}, {"b": 1, "t": 9, "P": 3, "L": 7, "T": 11, "C": 24},
                {"b": 2, "t": 2, "P": 2, "L": 4, "T": 40, "C": 48})  # C: fused-layout cache capacity


class ValidationError(RuntimeError):
    """One or more graph outputs differ from the torch reference beyond tolerance."""


def compare(session, reference_module, spec, feed_sets, torch_outputs=None) -> dict[str, dict[str, float]]:
    """Max abs / max rel error per output over all feed sets (with `torch_outputs`: the outputs they hold)."""
    import torch

    names = [n for n in spec.output_names if torch_outputs is None or n in torch_outputs[0]]
    report = {name: {"max_abs": 0.0, "max_rel": 0.0, "ref_max": 0.0} for name in names}
    for i, feeds in enumerate(feed_sets):
        got = session.run(names, feeds)
        if torch_outputs is not None:
            ref = [torch_outputs[i][n] for n in names]
        else:
            with torch.inference_mode():
                out = reference_module(*[torch.from_numpy(feeds[n]) for n in spec.input_names])
                ref = [r.numpy() for r, n in zip(out, spec.output_names, strict=True) if n in names]
        if "past_length" in feeds:  # fused layout: cache slots past the written ones are unspecified
            got = [_filled(n, g, feeds, spec) for n, g in zip(names, got, strict=True)]
            ref = [_filled(n, r, feeds, spec) for n, r in zip(names, ref, strict=True)]
        for name, g, r in zip(names, got, ref, strict=True):
            diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
            if diff.size:
                report[name]["max_abs"] = max(report[name]["max_abs"], float(diff.max()))
                report[name]["ref_max"] = max(report[name]["ref_max"], float(np.abs(r).max()))
                scale = np.maximum(np.abs(r), 1e-6)
                report[name]["max_rel"] = max(report[name]["max_rel"], float((diff / scale).max()))
    return report


def to_fused_feeds(feeds: dict[str, np.ndarray], spare: int = 3) -> dict[str, np.ndarray]:
    """A standard-layout call (stacked visible cache) as the same call in the fused layout: per-layer
    buffers with room for the new rows, `past_length` = the cached entries."""
    past_k, past_v = feeds["past_key"], feeds["past_value"]
    n, b, h, length, d = past_k.shape
    new = next(v for k, v in feeds.items() if not k.startswith("past_")).shape[1]
    out = {k: v for k, v in feeds.items() if not k.startswith("past_")}
    out["past_length"] = np.full((b,), length, dtype=np.int32)
    for i in range(n):
        for part, src in (("key", past_k), ("value", past_v)):
            buf = np.zeros((b, h, length + new + spare, d), dtype=np.float32)
            buf[:, :, :length] = src[i]
            out[f"past_{part}_{i}"] = buf
    return out


def draft_step_records(records: dict[str, list[tuple[dict, dict]]]) -> list[tuple[dict, dict]]:
    """Real-text calls of the fused draft_step: each recorded encoder call joined with the recorded
    decoder_step call that consumed its output (same positions, states equal to the encoder's), both
    converted to the fused layout; the reference outputs are the two calls' `states` and `logits`."""
    out = []
    decoder = records.get("decoder_step", [])
    for enc_feeds, enc_out in records.get("encoder", []):
        match = next(((f, o) for f, o in decoder if np.array_equal(f["positions"], enc_feeds["positions"])
                      and np.array_equal(f["states"], enc_out["states"])), None)
        if match is None:
            continue
        dec_feeds, dec_out = match
        feeds = to_fused_feeds(enc_feeds)
        feeds["memory"] = dec_feeds["memory"]
        feeds.update({f"{SECOND_CACHE}{k}": v for k, v in to_fused_feeds(dec_feeds).items() if k.startswith("past_")})
        out.append((feeds, {"states": enc_out["states"], "logits": dec_out["logits"]}))
    return out


def validate_graph(path: Path, module, spec, cfg, real: list[tuple[dict, dict]], block_size: int | None = None,
                   tol: float = 1e-5) -> dict:
    """Compare one exported graph against its torch module; raise ValidationError listing failing outputs.

    An output fails when max |Δ| > tol · max(1, max |reference|): fp32 rounding grows with magnitude, and
    some outputs are large (the global transformer has no final norm: trained latents reach ~1e4).
    """
    import onnxruntime as ort

    from fastblt.export.onnx_export import external_data_files

    opts = ort.SessionOptions()
    if sum(f.stat().st_size for f in [path, *external_data_files(path)]) > 64 << 20:
        opts.add_session_config_entry("session.disable_prepacking", "1")  # no second copy of a big graph
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = []
    for sizes in SAMPLE_SIZES:
        sizes = dict(sizes, B=block_size) if block_size else sizes
        feeds.append(sample_feeds(spec, cfg, sizes, seed=len(feeds)))
    report = {"sample": compare(session, module, spec, feeds)}
    if real:
        report["real_text"] = compare(session, module, spec, [f for f, _ in real], [o for _, o in real])
    failing = [f"{kind}:{name} max_abs={r['max_abs']:.2e} (reference max {r['ref_max']:.3g})"
               for kind, outs in report.items() for name, r in outs.items()
               if r["max_abs"] > tol * max(1.0, r["ref_max"])]
    if failing:
        raise ValidationError(f"{path.name}: ONNX Runtime differs from torch beyond {tol:g} × max(1, |reference|): "
                              + "; ".join(failing))
    return report


def _filled(name: str, value: np.ndarray, feeds: dict, spec) -> np.ndarray:
    """A fused-layout output, a present cache cut to its written slots (`{prefix}present_*` holds
    `{prefix}past_length` + t of them); any other output unchanged."""
    if "present_" not in name:
        return value
    prefix = name[: name.index("present_")]
    filled = int(feeds[f"{prefix}past_length"][0]) + feeds[spec.input_names[0]].shape[1]
    return value[:, :, :filled]
