"""The CUDA/TensorRT probe and TensorRT object creation on CPU machines: a driver too old for the CUDA build, a
null Builder/Runtime and missing packages each give one clear reason naming the fix (stand-in modules)."""

from __future__ import annotations

import sys

import pytest
from trt_helpers import cudaError_t, fake_cudart, fake_tensorrt, install

from fastblt.runtime import trt_device
from fastblt.runtime.trt_device import (
    PRECISIONS,
    DeviceError,
    DeviceInfo,
    PrecisionError,
    check_precision,
    create,
    parse_driver_version,
    probe,
    require_device,
    usable_precisions,
    versions,
)


@pytest.fixture(autouse=True)
def fresh_logger(monkeypatch):
    monkeypatch.setattr(trt_device, "_LOGGER", None)


def test_insufficient_driver_names_driver_580_and_the_cuda12_route(monkeypatch):
    install(monkeypatch, fake_tensorrt(), fake_cudart(cudaError_t.cudaErrorInsufficientDriver, driver_cuda=12040))
    info, reason = probe()
    assert info is None
    assert "cudaErrorInsufficientDriver" in reason and "supports CUDA 12.4" in reason
    assert "driver >= 580" in reason and "fastblt[trt-cu12]" in reason and "cuda-python>=12.6,<13" in reason
    with pytest.raises(DeviceError, match=r"cudaErrorInsufficientDriver.*driver >= 580"):
        require_device()


def test_no_device_is_not_blamed_on_the_driver(monkeypatch):
    install(monkeypatch, fake_tensorrt(), fake_cudart(cudaError_t.cudaErrorNoDevice))
    info, reason = probe()
    assert info is None and reason.startswith("no CUDA GPU is visible") and "580" not in reason


def test_missing_packages_are_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda", None)  # `import cuda...` raises ImportError
    assert probe() == (None, "cuda-python is not installed (pip install 'fastblt[trt]' or 'fastblt[trt-cu12]')")
    install(monkeypatch, cudart=fake_cudart())
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert probe() == (None, "the tensorrt Python package is not installed")


def test_a_usable_device_is_described(monkeypatch):
    install(monkeypatch, fake_tensorrt(version="11.4.0"), fake_cudart())
    assert probe() == (DeviceInfo("Fake GPU", "8.9", "11.4.0", False), "")


@pytest.mark.parametrize("kind", ["Builder", "Runtime"])
@pytest.mark.parametrize("null", ["none", "pybind-typeerror"])
def test_a_null_builder_or_runtime_is_a_driver_error(kind, null):
    def factory(logger):
        if null == "none":
            return None
        raise TypeError("pybind11::init(): factory function returned nullptr")

    trt = fake_tensorrt(**{kind.lower(): factory})
    with pytest.raises(DeviceError) as err:
        create(trt, kind)
    message = str(err.value)
    assert f"could not create its {kind}" in message
    assert "driver >= 580" in message and "fastblt[trt-cu12]" in message
    assert ("factory function returned nullptr" in message) == (null == "pybind-typeerror")


def test_builder_and_runtime_share_one_logger():
    seen = []
    trt = fake_tensorrt(builder=lambda logger: seen.append(logger) or "builder",
                        runtime=lambda logger: seen.append(logger) or "runtime")
    assert (create(trt, "Builder"), create(trt, "Runtime"), create(trt, "Builder")) == ("builder", "runtime",
                                                                                         "builder")
    assert trt.Logger.created == 1 and len(seen) == 3 and seen[0] is seen[1] is seen[2]
    assert seen[0].severity == trt.Logger.WARNING


def test_versions_report_cuda_and_tensorrt(monkeypatch):
    install(monkeypatch, cudart=fake_cudart(driver_cuda=12080))
    got = versions()
    assert got["cuda_driver_api"] == "12.8" and got["cuda_runtime"] == "13.0"
    assert set(got) == {"nvidia_driver", "cuda_python", "cuda_driver_api", "cuda_runtime", "tensorrt",
                        "tensorrt_cuda_build"}


def test_versions_without_cuda_python(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda", None)
    assert versions()["cuda_python"] == "not installed"


@pytest.mark.parametrize(("text", "want"), [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:24 UTC 2025", "580.65.06"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.133.20  Release Build  (dvs-builder)", "570.133.20"),
    ("GCC version:  gcc version 12.2.0", None),
])
def test_driver_version_from_proc(text, want):
    assert parse_driver_version(text) == want


ADA = DeviceInfo("NVIDIA GeForce RTX 4090", "8.9", "10.3.0", False)
TURING = DeviceInfo("Tesla T4", "7.5", "10.3.0", False)
ORIN = DeviceInfo("Orin", "8.7", "10.3.0", True)


def test_half_precisions_are_offered():
    assert PRECISIONS == ("fp32", "fp16", "bf16", "int8", "fp8")
    assert usable_precisions(ADA) == list(PRECISIONS)
    assert usable_precisions(ORIN) == ["fp32", "fp16", "bf16", "int8"]  # Ampere: no fp8
    assert usable_precisions(TURING) == ["fp32", "fp16", "int8"]
    for precision in ("fp16", "bf16"):
        check_precision(precision, ADA)
        check_precision(precision, ORIN)
    check_precision("fp16", TURING)


def test_bf16_below_ampere_names_fp16_and_what_works():
    with pytest.raises(PrecisionError, match=r"bf16 needs compute capability >= 8\.0.*Tesla T4 has 7\.5: build fp16 "
                                             r"engines instead; engine precisions Tesla T4 \(7\.5\) can build: "
                                             r"\['fp32', 'fp16', 'int8'\]"):
        check_precision("bf16", TURING)


def test_fp8_on_orin_names_what_works():
    with pytest.raises(PrecisionError, match=r"fp8 needs.*can build: \['fp32', 'fp16', 'bf16', 'int8'\]"):
        check_precision("fp8", ORIN)


@pytest.mark.parametrize(("precision", "match"), [
    ("int4", r"int4 is ONNX Runtime's weight-only CPU quantization"),
    ("int8-dynamic", r"int8-dynamic is ONNX Runtime's CPU quantization"),
    ("fp64", r"unknown precision 'fp64'; valid precisions are \['fp32', 'fp16', 'bf16', 'int8', 'fp8'\]"),
])
def test_cpu_and_unknown_precisions_name_what_works_on_this_gpu(precision, match):
    with pytest.raises(PrecisionError, match=match + r".*can build: \['fp32', 'fp16', 'int8'\]"):
        check_precision(precision, TURING)
