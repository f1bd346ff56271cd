"""Accuracy cross-check with NVIDIA Polygraphy's Comparator (`blt-export check BUNDLE --polygraphy`).

Each fp32 graph of a bundle runs under Polygraphy's own runners (ONNX Runtime on the CPU, plus the bundle's
TensorRT engine where this machine has a GPU and the engine) and is compared by `Comparator.compare_accuracy`
against the torch reference on real-text inputs: the exact feeds the runtime gives each graph while it
generates from held-out text in every mode. Polygraphy is what TensorRT users debug accuracy with, so a
mismatch shows up in the report they know. The tolerance is `validate.py`'s rule, per output:
max |Δ| ≤ tol · max(1, max |reference|), with rtol 0.
"""

from __future__ import annotations

from pathlib import Path

REFERENCE = "torch-reference"


class PolygraphyError(RuntimeError):
    """A graph's outputs under Polygraphy's runners differ from the torch reference beyond tolerance."""


def _polygraphy():
    try:
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
        from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
        from polygraphy.logger import G_LOGGER
    except ImportError:
        raise ImportError("--polygraphy needs NVIDIA Polygraphy: pip install 'fastblt[export]' "
                          "(or pip install polygraphy)") from None
    return OnnxrtRunner, SessionFromOnnx, Comparator, RunResults, SimpleCompareFunc, G_LOGGER


def compare_graph(onnx_path: Path, records: list[tuple[dict, dict]], tol: float = 1e-5,
                  engine_bytes: bytes | None = None) -> dict:
    """Run one graph under Polygraphy and compare every runner with the recorded torch outputs.
    Returns {runner: {output: max_abs}} plus "passed"; `records` are (feeds, torch outputs) pairs."""
    OnnxrtRunner, SessionFromOnnx, Comparator, RunResults, SimpleCompareFunc, G_LOGGER = _polygraphy()
    runners = [OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"]), name="onnxruntime-cpu")]
    if engine_bytes is not None:  # written against Polygraphy's documented TrtRunner; not verified on a GPU
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        runners.append(TrtRunner(EngineFromBytes(engine_bytes), name="tensorrt"))
    feeds = [f for f, _ in records]
    refs = [o for _, o in records]
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        ran = Comparator.run(runners, data_loader=feeds)
        results = RunResults()
        results.add(refs, runner_name=REFERENCE)
        for name, iterations in ran.items():
            results[name] = iterations
        atol = {n: tol * max(1.0, max((float(abs(r[n]).max()) for r in refs if r[n].size), default=0.0))
                for n in refs[0]}
        accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=0.0),
                                               comparisons=[(0, i) for i in range(1, len(results))])
    report: dict = {"passed": bool(accuracy), "iterations": len(feeds), "atol": atol}
    # Polygraphy ≥ 0.50 returns a list with one result per compare function, older releases the result itself
    for result in ([accuracy] if hasattr(accuracy, "items") else list(accuracy)):
        for (_, runner), per_iteration in result.items():
            worst = report.setdefault(runner, {})
            for outputs in per_iteration:
                for name, res in outputs.items():
                    worst[name] = max(worst.get(name, 0.0), res.max_absdiff or 0.0)
    return report


def polygraphy_check(bundle: str | Path, model, prompts: list[bytes] | None = None, limit: int = 8,
                     tol: float = 1e-5, log=print) -> dict:
    """Compare every fp32 graph (and its TensorRT engine, on a GPU) of `bundle` with `model`, the torch
    module it was exported from; raises PolygraphyError naming every failing graph output."""
    from fastblt.export.calibration import prompts_from, record
    from fastblt.graphs.training.data import heldout_windows
    from fastblt.runtime.backends.torch_ref import TorchBackend
    from fastblt.runtime.manifest import Manifest

    _polygraphy()
    manifest = Manifest.load(bundle)
    if manifest.config != model.config:
        raise PolygraphyError(f"{manifest.root}: the checkpoint's config differs from the bundle's; pass the "
                              "checkpoint the bundle was built from (--checkpoint)")
    if prompts is None:
        prompts = prompts_from(heldout_windows(None, 256, 4), 2)
    rec = record(TorchBackend(model), prompts, new_bytes=24, limit=limit)
    engines = _fp32_engines(manifest)
    report, failing = {}, []
    for key in manifest.standard_keys():  # the fused ONNX Runtime layout: validated at build time
        records = rec.records.get(key, [])
        if not records:
            log(f"{key}: no real-text inputs recorded (block size unused by these prompts), skipped")
            continue
        path = manifest.graph_file(key, "fp32")
        engine = engines.get(key)
        report[key] = compare_graph(path, records, tol, engine.read_bytes() if engine else None)
        runners = [r for r in report[key] if r not in ("passed", "iterations", "atol")]
        worst = max(err / report[key]["atol"][n] for r in runners for n, err in report[key][r].items())
        log(f"{key}: {'PASSED' if report[key]['passed'] else 'FAILED'} ({', '.join(runners)} vs {REFERENCE}, "
            f"{len(records)} real-text calls; worst output at {worst:.2f}× its tolerance)")
        for runner in runners:
            for name, err in report[key][runner].items():
                if err > report[key]["atol"][name]:
                    failing.append(f"{key}:{runner}:{name} max_abs={err:.2e} > {report[key]['atol'][name]:.2e}")
    if failing:
        raise PolygraphyError("Polygraphy Comparator: outputs differ from the torch reference: " + "; ".join(failing))
    return report


def _fp32_engines(manifest) -> dict[str, Path]:
    """fp32 engine files that this machine can run (none without a CUDA GPU and TensorRT)."""
    from fastblt.runtime.trt_device import check_engine, device_info

    records = [r for r in manifest.engines if r.precision == "fp32"]
    info = device_info() if records else None
    if info is None:
        return {}
    out = {}
    for r in records:
        check_engine(r.to_dict(), info, manifest.file_entry(r.graph_key, "fp32").digest)
        out[r.graph_key] = manifest.root / r.path
    return out
