"""ONNX Runtime vs the torch reference, per graph and per output, on sample and real-text inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastblt.export.onnx_export import sample_feeds

SAMPLE_SIZES = ({"b": 1, "t": 1, "P": 1, "L": 1, "T": 0}, {"b": 1, "t": 9, "P": 3, "L": 7, "T": 11},
                {"b": 2, "t": 2, "P": 2, "L": 4, "T": 40})


class ValidationError(RuntimeError):
    """One or more graph outputs differ from the torch reference beyond tolerance."""


def compare(session, reference_module, spec, feed_sets, torch_outputs=None) -> dict[str, dict[str, float]]:
    """Max abs / max rel error per output over all feed sets."""
    import torch

    report = {name: {"max_abs": 0.0, "max_rel": 0.0, "ref_max": 0.0} for name in spec.output_names}
    for i, feeds in enumerate(feed_sets):
        got = session.run(None, feeds)
        if torch_outputs is not None:
            ref = [torch_outputs[i][n] for n in spec.output_names]
        else:
            with torch.inference_mode():
                ref = [r.numpy() for r in reference_module(*[torch.from_numpy(feeds[n]) for n in spec.input_names])]
        for name, g, r in zip(spec.output_names, got, ref, strict=True):
            diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
            if diff.size:
                report[name]["max_abs"] = max(report[name]["max_abs"], float(diff.max()))
                report[name]["ref_max"] = max(report[name]["ref_max"], float(np.abs(r).max()))
                scale = np.maximum(np.abs(r), 1e-6)
                report[name]["max_rel"] = max(report[name]["max_rel"], float((diff / scale).max()))
    return report


def validate_graph(path: Path, module, spec, cfg, real: list[tuple[dict, dict]], block_size: int | None = None,
                   tol: float = 1e-5) -> dict:
    """Compare one exported graph against its torch module; raise ValidationError listing failing outputs.

    An output fails when max |Δ| > tol · max(1, max |reference|): fp32 rounding grows with magnitude, and
    some outputs are large (the global transformer has no final norm: trained latents reach ~1e4).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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
