"""Every precision a bundle can hold, and the facts about it that export, the runtime and the docs read.

Torch-free: the runtime checks a request against this table before it opens a file, so asking a CPU for a
GPU-only precision is one clear error naming the precisions that would work.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    name: str
    cache_dtype: str  # numpy dtype name of the graphs' KV-cache inputs and outputs
    cpu: bool  # ONNX Runtime's CPU provider has kernels for it
    trt: bool  # TensorRT engines are built from it
    fused: bool  # bundles carry the fused CPU layout (graphs/incremental/fused.py) in it
    calibrated: bool  # built from recorded real-text activations
    weight_bits: float  # bits per weight of the MatMul weights (for size estimates)
    summary: str


_ALL = (
    Precision("fp32", "float32", True, True, True, False, 32, "the reference every other precision is checked against"),
    Precision("fp16", "float16", True, True, False, False, 16,
              "half weights, activations and KV caches with fp32 norms, softmax, RoPE tables and logits; "
              "for GPUs and Jetson (on a CPU it runs, slower than fp32)"),
    Precision("bf16", "bfloat16", False, True, False, False, 16,
              "as fp16 with bfloat16's range; GPUs from Ampere on (ONNX Runtime's CPU provider has no bf16 "
              "kernels)"),
    Precision("int8", "float32", True, True, False, True, 8,
              "INT8 Q/DQ weight MatMuls for TensorRT (on a CPU it dequantizes every call)"),
    Precision("fp8", "float32", True, True, False, True, 8,
              "FP8 E4M3 Q/DQ (NVIDIA ModelOpt) for TensorRT on compute capability 8.9+"),
    Precision("int8-dynamic", "float32", True, False, True, False, 8,
              "8-bit MatMulNBits weights, activations quantized per call: ONNX Runtime on CPU"),
    Precision("int4", "float32", True, False, True, False, 4,
              "4-bit MatMulNBits weights (block size and accuracy level chosen by measurement): ONNX Runtime "
              "on CPU and small devices"),
)
PRECISIONS: dict[str, Precision] = {p.name: p for p in _ALL}
NAMES = tuple(PRECISIONS)
CPU = tuple(p.name for p in _ALL if p.cpu)
FUSED = tuple(p.name for p in _ALL if p.fused)
TRT = tuple(p.name for p in _ALL if p.trt)
HALF = ("fp16", "bf16")


class PrecisionUnknown(ValueError):
    """A precision name fastblt does not know."""


def precision(name: str) -> Precision:
    if name not in PRECISIONS:
        raise PrecisionUnknown(f"unknown precision {name!r}; valid precisions are {list(NAMES)}")
    return PRECISIONS[name]


def cache_dtype(name: str) -> str:
    return precision(name).cache_dtype
