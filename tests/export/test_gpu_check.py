"""The one-command GPU check on a CPU machine: its tolerance rule, narrowed profiles, exit statuses, and its
torch fallback pipeline (run here with torch on the CPU in place of CUDA)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
from trt_helpers import fake_tensorrt, install

from fastblt.export import gpu_check
from fastblt.export.gpu_check import NO_GPU, compare, max_abs, narrow_ranges, tolerances
from fastblt.export.trt_build import profile_shapes
from fastblt.graphs.config import SUPPORTED_BLOCK_SIZES, tiny_config
from fastblt.graphs.spec import dim_ranges, graph_specs

ARGS = SimpleNamespace(prompts=1, prompt_bytes=24, new_bytes=8, calls=4, tol=1e-4, margin=2.0)


def test_tolerance_is_relative_to_the_largest_reference_value():
    refs = [{"a": np.array([0.5, -3.0]), "b": np.array([1e4]), "c": np.zeros((0, 2))}]
    assert tolerances(refs, 1e-4) == pytest.approx({"a": 3e-4, "b": 1.0, "c": 1e-4})


def test_quantized_engines_get_margin_times_ortss_own_quantization_error():
    refs = [{"a": np.array([2.0])}]
    assert tolerances(refs, 1e-4, {"a": 0.05}, margin=2.0) == pytest.approx({"a": 0.1})
    assert tolerances(refs, 1e-4, {"a": 1e-6}, margin=2.0) == pytest.approx({"a": 2e-4})  # never below fp32's


def test_compare_fails_outputs_beyond_tolerance_and_nan():
    want = [{"x": np.array([1.0, 2.0]), "y": np.array([0.0])}]
    log = []
    assert compare("g", [{"x": np.array([1.0, 2.0001]), "y": np.array([0.0])}], want, {"x": 1e-3, "y": 1e-3},
                   log.append) == []
    bad = compare("g", [{"x": np.array([1.0, 2.1]), "y": np.array([np.nan])}], want, {"x": 1e-3, "y": 1e-3},
                  log.append)
    assert [b.split(" ")[0] for b in bad] == ["g:x", "g:y"] and "FAILED" in log[-1]
    with pytest.raises(ValueError, match="shape"):
        max_abs([{"x": np.zeros(3)}], [{"x": np.zeros(2)}])


@pytest.mark.parametrize("block", [None, *SUPPORTED_BLOCK_SIZES])
def test_narrow_profiles_stay_valid_and_cap_every_length(block):
    cfg = tiny_config()
    full, narrow = dim_ranges(cfg, block), narrow_ranges(dim_ranges(cfg, block), 100)
    for key, (low, opt, high) in narrow.items():
        assert low <= opt <= high and low == full[key][0], key
        assert high == (full[key][2] if key in ("b", "B", "L") else min(full[key][2], 100)), key
    for name, spec in graph_specs(cfg).items():
        if (name == "decoder_block") == (block is not None):
            for low, opt, high in profile_shapes(spec, narrow).values():
                assert all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True))


def test_no_bundle_is_a_failure(tmp_path):
    log = []
    assert gpu_check.main(["--bundle", str(tmp_path / "none")], log=log.append) == 1
    assert "is not a bundle" in log[-1]


def test_no_gpu_at_all_exits_2_with_the_reason(tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setattr(gpu_check, "_torch_cuda", lambda: None)
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None)
    log = []
    assert gpu_check.main(["--bundle", str(tmp_path)], log=log.append) == NO_GPU
    assert log[0].startswith("fastblt GPU check, ") and any(line.startswith("  tensorrt: ") for line in log)
    assert log[-1] == ("no usable NVIDIA GPU: TensorRT cannot run (cuda-python is not installed (pip install "
                       "'fastblt[trt]' or 'fastblt[trt-cu12]')) and torch sees no CUDA device; nothing to check")


def test_installed_but_unusable_tensorrt_is_a_failure_not_a_fallback(tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text("{}")
    install(monkeypatch, fake_tensorrt())
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setattr(gpu_check, "_torch_cuda", lambda: pytest.fail("must not fall back to torch"))
    log = []
    assert gpu_check.main(["--bundle", str(tmp_path)], log=log.append) == 1
    assert log[-1].startswith("FAILED: tensorrt is installed but cannot run here: cuda-python is not installed")


@pytest.fixture
def model():
    """A tiny model; torch on one thread meanwhile (tiny matmuls only lose from a second thread on a busy CPU)."""
    import torch

    from fastblt.graphs.model import BltModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield BltModel(tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8))).eval()
    torch.set_num_threads(threads)


def test_the_fallback_comparison_passes_on_the_same_weights(model):
    from fastblt.runtime.backends.torch_ref import TorchBackend

    log = []
    backend = gpu_check.TorchCudaBackend(model, "cpu")  # the CUDA fallback's backend, on the CPU here
    reference = TorchBackend(model)
    reference.fused_block_rows = frozenset({4, 8})  # the real reference is a bundle: static decoder_block sizes
    assert gpu_check.check_against(backend, reference, ARGS, log.append) == []
    assert [line.split(":")[0] for line in log if line.endswith("its tolerance)")] == [
        "  decoder_block_4 (torch-cpu)", "  decoder_block_8 (torch-cpu)", "  decoder_step (torch-cpu)",
        "  encoder (torch-cpu)", "  global (torch-cpu)", "  patcher (torch-cpu)"]
    assert [line.split()[0] for line in log if "bytes/s" in line] == list(gpu_check.MODES)


def test_the_fallback_comparison_fails_on_other_weights(model):
    import torch

    from fastblt.graphs.model import BltModel
    from fastblt.runtime.backends.torch_ref import TorchBackend

    torch.manual_seed(1)
    other = gpu_check.TorchCudaBackend(BltModel(model.config).eval(), "cpu")
    failures = gpu_check.check_against(other, TorchBackend(model), ARGS, lambda m: None)
    assert any(f.startswith("decoder_step (torch-cpu):logits max|Δ|=") for f in failures), failures


def test_the_fallback_refuses_a_checkpoint_of_another_bundle(model, tiny_bundle, tmp_path):
    from fastblt.runtime.manifest import Manifest, write_manifest

    manifest = Manifest.load(tiny_bundle).to_dict() | {"model": tiny_config().to_dict()}
    write_manifest(tmp_path, manifest)  # model has vocab 262, this bundle 260
    assert gpu_check.check_torch_cuda(tmp_path, model, ARGS, print, device="cpu") == [
        f"the checkpoint is not the one {tmp_path} was built from (configs differ); pass --checkpoint"]
