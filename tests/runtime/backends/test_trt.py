"""The TensorRT backend on CPU machines, over stand-in tensorrt/cuda modules: engines with shape-tensor or
host-located I/O are refused at load, a null Runtime is a driver error, and concurrent `run` calls from several
threads never overlap on the shared execution context."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from trt_helpers import FakeEngine, fake_cudart, fake_tensorrt, install

from fastblt.graphs.config import tiny_config
from fastblt.graphs.spec import graph_specs
from fastblt.runtime import trt_device
from fastblt.runtime.manifest import BundleError, write_manifest
from fastblt.runtime.trt_device import DeviceError

MODULE = "fastblt.runtime.backends.trt"
SPEC = graph_specs(tiny_config())["patcher"]


def _load(monkeypatch, runtime=None):
    """Import the backend against the stand-ins (and drop it again afterwards: it binds them at import)."""
    monkeypatch.setattr(trt_device, "_LOGGER", None)
    install(monkeypatch, fake_tensorrt(runtime=runtime), fake_cudart())
    sys.modules.pop(MODULE, None)
    return importlib.import_module(MODULE)


@pytest.fixture
def unload():
    yield
    sys.modules.pop(MODULE, None)


def _bundle(root, engine_bytes=b"plan-bytes"):
    """A manifest with one graph (the patcher) and one fp32 engine record matching the stand-in device."""
    onnx_sha = "ab" * 32
    (root / "engines").mkdir(parents=True)
    (root / "engines" / "p.plan").write_bytes(engine_bytes)
    cfg = tiny_config()
    rows = cfg.n_hash_tables * cfg.hash_vocab
    table = np.zeros((rows, cfg.encoder.dim), np.float32).tobytes()
    (root / "table.bin").write_bytes(table)
    write_manifest(root, {
        "hash_table": {"rows": rows, "dim": cfg.encoder.dim, "dtype": "float32",
                       "data": {"path": "table.bin", "sha256": hashlib.sha256(table).hexdigest(),
                                "bytes": len(table)}},
        "model": tiny_config().to_dict(), "precisions": ["fp32"], "block_sizes": [],
        "created": "2026-01-01T00:00:00+00:00", "opset": 18, "special_ids": {}, "patching": {}, "validation": {},
        "quantization": {}, "tools": {}, "quality": {},
        "graphs": {"patcher": {"graph": "patcher", "block_size": None,
                               "files": {"fp32": {"path": "fp32/patcher.onnx", "sha256": onnx_sha}}}},
        "engines": [{"graph_key": "patcher", "precision": "fp32", "path": "engines/p.plan",
                     "sha256": hashlib.sha256(engine_bytes).hexdigest(), "gpu_name": "Fake GPU",
                     "compute_capability": "8.9", "trt_version": "10.3.0", "onnx_sha256": onnx_sha}],
    })
    json.loads((root / "manifest.json").read_text())
    return root


def _feeds(t: int = 3):
    cfg = tiny_config().patcher
    cache = np.zeros((cfg.n_layers, 1, cfg.kv_heads, 2, cfg.head_dim), np.float32)
    return {"ids": np.full((1, t), 7, np.int64), "positions": np.arange(2, 2 + t, dtype=np.int64)[None],
            "past_key": cache, "past_value": cache.copy()}


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(shape_io=["positions"]), r"tensor 'positions' is a shape tensor"),
    (dict(host=["entropies"]), r"tensor 'entropies' lives in host memory"),
])
def test_engines_with_shape_or_host_tensors_are_refused_at_load(monkeypatch, unload, kwargs, match):
    backend = _load(monkeypatch)
    with pytest.raises(BundleError, match=match + r".*blt-export engine"):
        backend._Engine(FakeEngine(SPEC, **kwargs), SPEC, "patcher (fp32, p.plan)")
    backend._Engine(FakeEngine(SPEC), SPEC, "patcher (fp32, p.plan)")  # the same engine without them loads


def test_a_null_runtime_is_a_driver_error(monkeypatch, unload, tmp_path):
    backend = _load(monkeypatch, runtime=lambda logger: None)
    with pytest.raises(DeviceError, match=r"could not create its Runtime.*driver >= 580"):
        backend.TensorRTBackend(_bundle(tmp_path / "b"))


def test_concurrent_runs_never_share_the_context_at_once(monkeypatch, unload, tmp_path):
    engine = FakeEngine(SPEC)
    backend = _load(monkeypatch, runtime=lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda d: engine))
    trt = backend.TensorRTBackend(_bundle(tmp_path / "b"))
    results, errors = [], []

    def worker(t):
        try:
            for _ in range(5):
                results.append((t, trt.run("patcher", _feeds(t))))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in (1, 2, 3, 4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert engine.calls == 20 and engine.most_active == 1
    for t, out in results:
        assert out["entropies"].shape == (1, t) and out["new_key"].shape[3] == t
    trt.close()
    with pytest.raises(RuntimeError, match="this TensorRT backend is closed"):
        trt.run("patcher", _feeds())
