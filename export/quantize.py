"""Post-training quantization: Q/DQ ONNX calibrated on real text (INT8, FP8 E4M3) for TensorRT, and INT8
with dynamic activation scales for ONNX Runtime on CPU.

FP8 (E4M3) comes from NVIDIA ModelOpt's ONNX PTQ (the only tool that writes FP8 Q/DQ). INT8 comes from ONNX
Runtime's `quantize_static` (symmetric, per-channel weights, weight MatMuls only, so zero points stay 0 as
TensorRT requires), because ModelOpt INT8, which also quantizes attention and residual inputs, lost far more
held-out bits/byte on the default model (docs/architecture.md has the numbers).

Q/DQ graphs are the portable format TensorRT compiles, but ORT's CPU EP dequantizes their weights on every
call, so they run slower than FP32 there. `int8-dynamic` is the CPU precision: every weight MatMul becomes
ORT's `MatMulNBits` with 8-bit symmetric weights in blocks of 32 and accuracy level 4, i.e. integer
matmuls on activations quantized at run time per row and block. Per-row scales keep a row's logits nearly
independent of the other rows in the call (ORT `quantize_dynamic`'s per-tensor activation scale couples them),
but ORT's kernels for one row and for several are not bit-identical: 5e-7 on decoder logits, and on BLT-1B's
global graph 0.03 (on outputs of magnitude 4) between a one-patch and a three-patch call (docs/scale.md). So
greedy BLT-S and BLT-DV equal AR on the default model (tested) but are not guaranteed to: where two bytes'
logits nearly tie, as with random weights, they can diverge. TensorRT cannot build it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from fastblt.graphs.precisions import HALF, NAMES, TRT

PRECISIONS = NAMES
ORT_ONLY = tuple(p for p in NAMES if p not in TRT)  # precisions TensorRT engines are never built from
BLOCK = 32  # int8-dynamic: weights per scale, and activations quantized per row in blocks of this many
# int4: weights per scale, chosen by `blt-bench precision --int4-blocks` (docs/scale.md): at accuracy level 4
# (int8 activations, integer dot products) a block of 32 costs the least held-out bits/byte for the speed
INT4_BLOCK = 32
ACCURACY_LEVEL = 4
MODELOPT_HINT = ("pip install --no-deps nvidia-modelopt==0.47.0 onnx-graphsurgeon (its [onnx] extra pins an old "
                 "onnx and onnxruntime-gpu, so install it without the extra, next to onnx and onnxruntime)")


class QuantizeError(RuntimeError):
    """Quantization is impossible with what is installed, or failed."""


def modelopt_available() -> bool:
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except Exception:  # ImportError, or a broken optional dependency inside modelopt
        return False
    return True


_FOLDABLE = ("Transpose", "Concat", "Reshape", "Identity", "Squeeze", "Unsqueeze")


def fold_weight_chains(model) -> int:
    """Replace each MatMul weight computed from initializers alone (the fused layout's Transpose(Concat(Wq, Wk,
    Wv)) and Transpose(Concat(W1, W3)), which the exporter leaves unfolded) by one initializer holding its value,
    so weight-only quantizers see it: unfolded, they skipped those MatMuls, about two thirds of a fused layer's
    weights. Returns the number of weights folded; unused nodes and initializers are dropped."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    cache: dict[str, np.ndarray | None] = {}

    def value(name: str):
        if name in cache:
            return cache[name]
        out = None
        if name in inits:
            out = numpy_helper.to_array(inits[name])
        elif name in producer and producer[name].op_type in _FOLDABLE:
            node = producer[name]
            args = [value(i) for i in node.input]
            if all(a is not None for a in args):
                attrs = {a.name: a for a in node.attribute}
                op = node.op_type
                if op == "Transpose":
                    perm = list(attrs["perm"].ints) if "perm" in attrs else None
                    out = np.ascontiguousarray(np.transpose(args[0], perm))
                elif op == "Concat":
                    out = np.concatenate(args, axis=attrs["axis"].i)
                elif op == "Reshape" and args[1].dtype.kind == "i" and not (args[1] == 0).any():
                    out = args[0].reshape(tuple(int(d) for d in args[1]))
                elif op in ("Squeeze", "Unsqueeze") and len(args) == 2:
                    axes = tuple(int(a) for a in args[1])
                    out = np.squeeze(args[0], axes) if op == "Squeeze" else np.expand_dims(args[0], axes)
                elif op == "Identity":
                    out = args[0]
        cache[name] = out
        return out

    folded = 0
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        for i, name in enumerate(node.input):
            if name in inits or name not in producer or producer[name].op_type not in _FOLDABLE:
                continue
            weight = value(name)
            if weight is None or weight.dtype != np.float32:
                continue
            new = f"{name}_folded"
            if new not in inits:
                graph.initializer.append(numpy_helper.from_array(weight, new))
                inits[new] = graph.initializer[-1]
            node.input[i] = new
            folded += 1
    if folded:
        _drop_unused(graph)
    return folded


def _drop_unused(graph) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _weight_matmuls(path: Path) -> list[str]:
    """MatMul/Gemm nodes with a constant weight input: activation×activation products (attention) stay
    in float, which costs nothing in size and keeps the attention scores exact. RoPE's constant pair-swap
    matrix is no weight either: it stays exact in float (quantizing it would only add error to q and k)."""
    import onnx

    return _weight_matmul_nodes(onnx.load(str(path), load_external_data=False))  # names only: weights stay on disk


def _weight_matmul_nodes(model) -> list[str]:
    consts = {i.name for i in model.graph.initializer}
    consts |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
            and any(i in consts and not i.endswith("rotary_emb.swap") for i in n.input)]


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def _external(src: Path) -> bool:
    from fastblt.export.onnx_export import external_data_files

    return bool(external_data_files(src))


def _copy_graph(src: Path, dst: Path) -> None:
    """Copy an ONNX file with its external-data files (same names, so its locations still resolve)."""
    from fastblt.export.onnx_export import external_data_files

    for data in external_data_files(src):
        shutil.copyfile(data, dst.parent / data.name)
    shutil.copyfile(src, dst)


def _clear_data(dst: Path) -> None:
    """ONNX's external-data writer appends to an existing file: start from none."""
    dst.with_name(dst.name + ".data").unlink(missing_ok=True)


def quantize_ort_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    nodes = _weight_matmuls(src)
    if not nodes:
        _copy_graph(src, dst)
        return {"tool": "none (no weight MatMul)", "quantized_nodes": 0}
    _clear_data(dst)
    quantize_static(str(src), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    use_external_data_format=_external(src),
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    return {"tool": "onnxruntime.quantize_static", "quantized_nodes": len(nodes), "calibration_calls": len(feeds)}


def quantize_ort_dynamic(src: Path, dst: Path, bits: int = 8, block: int = BLOCK,
                         accuracy_level: int = ACCURACY_LEVEL) -> dict:
    """Weight-only MatMulNBits (8 or 4 bits, symmetric, one scale per `block` weights of a column); with
    accuracy level 4 ORT quantizes each call's activations to int8 per row and block and multiplies in integers."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    folded = fold_weight_chains(model)
    nodes = _weight_matmul_nodes(model)
    if not nodes:
        _copy_graph(src, dst)
        return {"tool": "none (no weight MatMul)", "quantized_nodes": 0}
    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=accuracy_level,
                                          bits=bits)
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in nodes]
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=others, algo_config=config)  # (include only adds)
    quantizer.process()
    _clear_data(dst)
    # external data when the source had it: 8-bit weights of a 5 GB graph are still over protobuf's 2 GiB
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=_external(src))
    del quantizer, model
    return {"tool": "onnxruntime MatMulNBitsQuantizer", "bits": bits, "block_size": block,
            "accuracy_level": accuracy_level, "quantized_nodes": len(nodes), "folded_weights": folded}


def quantize_modelopt(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], mode: str) -> dict:
    """ModelOpt's ONNX PTQ in a child process: it changes ONNX Runtime's quantization code for the rest of the
    process it runs in (an int8 `quantize_static` after it then finds no range for ordinary activations), and
    its memory is returned when the child exits. The calibration batch goes through an .npz (no pickle)."""
    import subprocess
    import tempfile

    # ModelOpt calibrates on one batch per input; use the largest recorded call (most rows of real text)
    best = max(feeds, key=lambda f: max(v.size for v in f.values()))
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:  # ModelOpt rewrites its input in place: a copy
        work = Path(tmp) / src.name
        _copy_graph(src, work)
        _clear_data(dst)
        np.savez(Path(tmp) / "calibration.npz", **best)
        cmd = [sys.executable, "-m", "fastblt.export.quantize", "--modelopt", str(work), str(dst), mode,
               str(Path(tmp) / "calibration.npz"), "1" if _external(src) else "0"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise QuantizeError(f"{src.name}: NVIDIA ModelOpt {mode} quantization failed:\n{tail}")
    return {"tool": "nvidia-modelopt", "mode": mode, "calibration": "max"}


def _modelopt_child(work: str, dst: str, mode: str, calibration: str, external: str) -> None:
    from modelopt.onnx.quantization import quantize

    with np.load(calibration, allow_pickle=False) as data:
        batch = {k: data[k] for k in data.files}
    quantize(onnx_path=work, quantize_mode=mode, calibration_data=batch, calibration_method="max",
             calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=dst,
             use_external_data_format=external == "1")


def quantize_graph(src: Path, dst: Path, precision: str, feeds: list[dict[str, np.ndarray]]) -> dict:
    if precision not in PRECISIONS[1:]:
        raise QuantizeError(f"precision {precision!r}; quantized precisions are {list(PRECISIONS[1:])}")
    if precision == "int8-dynamic":  # scales come from each call's activations: no calibration
        return quantize_ort_dynamic(src, dst)
    if precision == "int4":
        return quantize_ort_dynamic(src, dst, bits=4, block=INT4_BLOCK)
    if precision in HALF:
        from fastblt.export.half import HalfError, convert_half

        try:
            return convert_half(src, dst, precision)
        except HalfError as exc:
            raise QuantizeError(str(exc)) from None
    if not feeds:
        raise QuantizeError(f"{src.name}: no calibration inputs were recorded for this graph")
    if precision == "fp8":
        if not modelopt_available():
            raise QuantizeError(f"--precision fp8 needs NVIDIA ModelOpt: {MODELOPT_HINT}")
        return quantize_modelopt(src, dst, feeds, "fp8")
    try:
        return quantize_ort_int8(src, dst, feeds)
    except ValueError as exc:  # ORT names a tensor, not the graph: say which graph and what was recorded
        shapes = {k: v.shape for k, v in feeds[0].items()} if feeds else {}
        raise QuantizeError(f"{src.name}: ONNX Runtime's static quantization failed ({exc}); {len(feeds)} "
                            f"calibration calls were recorded (first: {shapes})") from None


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "--modelopt":
    _modelopt_child(*sys.argv[2:])
