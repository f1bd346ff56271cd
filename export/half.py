"""fp16 and bf16 graphs: an fp32 ONNX graph converted to half weights and activations, with fp32 islands.

What stays fp32 is found in the graph, not listed by node name, so the rule holds for every graph and size:

- `norm`: each RMSNorm's statistics (x² → mean → +eps → sqrt → x/…), as graphs/layers.py computes them; the
  weight multiply runs in half, as in the model.
- `softmax`: every Softmax and the elementwise ops between its score MatMul and it (scale, masks, biases), so
  scores and probabilities are fp32; the q·k and p·v MatMuls run in half.
- `tables`: everything computed without a float activation: RoPE angles and their cos/sin (positions up to
  the thousands lose whole radians in fp16), attention masks and constants.
- `head`: the logits/entropy head back to and including its MatMul (a 260-row weight), so logits are fp32, and
  the projection that makes any other float output (the global model's `memory`: up to 4.4e4 in the default
  model, over fp16's 6.55e4 in some calls), reached back through shape-only ops.
- `residual`: the residual stream, i.e. each Add of a weight MatMul's output (attention or FFN projection)
  to an activation. A trained model's residual stream can outgrow fp16: the default model's global stack
  reaches 4.4e4 against fp16's 6.55e4 maximum, and without this island its fp16 held-out bits/byte nearly
  doubled (docs/scale.md). The branches (projections, attention, FFN) stay half.

Graph inputs and outputs keep fp32 except the KV caches, which are half (half the bytes to keep and move);
ids and positions stay integers. Each island's effect on held-out bits/byte is measured by
`blt-bench precision` (docs/scale.md). The conversion itself is ONNX Runtime's float16 converter
(onnxruntime.transformers.float16) with these islands as its node block list; bf16 is the same graph with
every half type turned into bfloat16 and each weight rounded once from its fp32 value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HALF = ("fp16", "bf16")
ISLANDS = ("norm", "softmax", "tables", "head", "residual")
_PASS_THROUGH = {"Mul", "Add", "Sub", "Div", "Where", "Cast", "Reshape", "Concat", "Transpose", "Unsqueeze",
                 "Squeeze", "Expand", "Slice", "Neg", "Exp", "Log", "ReduceMax", "ReduceSum", "LogSoftmax",
                 "Softmax", "Identity", "Gather", "Split", "Flatten"}
_HEAD_OUTPUTS = ("logits", "entropies")
_SHAPE_ONLY = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Identity", "Cast", "Flatten"}


class HalfError(RuntimeError):
    """A graph cannot be converted to the asked half precision."""


def is_cache_tensor(name: str) -> bool:
    """KV-cache inputs and outputs (past_/new_/present_/block_ key and value, any stack prefix)."""
    return name.endswith(("_key", "_value")) or "_key_" in name or "_value_" in name


def fp32_islands(model, islands: tuple[str, ...] = ISLANDS) -> set[str]:
    """Names of the nodes that stay fp32 (see the module docstring)."""
    import onnx

    bad = [i for i in islands if i not in ISLANDS]
    if bad:
        raise HalfError(f"unknown fp32 islands {bad}; valid: {list(ISLANDS)}")
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    keep: set[str] = set()
    if "tables" in islands:
        # a value depends on an activation if it derives from a float graph input; nodes that do not are tables
        float_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
        active = set(float_inputs)
        for n in graph.node:  # exported graphs are topologically sorted
            if any(i in active for i in n.input):
                active.update(n.output)
            elif n.op_type not in ("Shape", "Size"):
                keep.add(n.name)
    if "norm" in islands:
        for n in graph.node:
            if n.op_type != "ReduceMean" or producer.get(n.input[0]) is None or producer[n.input[0]].op_type != "Pow":
                continue
            chain = [producer[n.input[0]], n]
            cur = n
            for op in ("Add", "Sqrt", "Div"):
                nxt = [c for c in consumers.get(cur.output[0], []) if c.op_type == op]
                if len(nxt) != 1:
                    break
                chain.append(nxt[0])
                cur = nxt[0]
            keep.update(c.name for c in chain)
    if "residual" in islands:
        consts = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
        weight_mm = {n.output[0] for n in graph.node if n.op_type in ("MatMul", "Gemm")
                     and any(i in consts for i in n.input)}
        for n in graph.node:
            if n.op_type == "Add" and any(i in weight_mm for i in n.input) and not any(i in consts for i in n.input):
                keep.add(n.name)
    if "softmax" in islands:
        for n in graph.node:
            if n.op_type == "Softmax":
                keep.add(n.name)
                _walk_back(n, producer, keep, stop="MatMul", include_stop=False)
    if "head" in islands:
        for out in graph.output:
            if is_cache_tensor(out.name) or out.name not in producer:
                continue
            node = producer[out.name]
            if out.name in _HEAD_OUTPUTS:
                keep.add(node.name)
                _walk_back(node, producer, keep, stop="MatMul", include_stop=True)
            else:  # states, memory: the projection that makes them, if nothing but reshapes follows it
                chain = []
                while node is not None and node.op_type in _SHAPE_ONLY:
                    chain.append(node)
                    node = producer.get(node.input[0])
                if node is not None and node.op_type == "MatMul":
                    keep.update(n.name for n in (*chain, node))
    return keep


def _walk_back(node, producer, keep: set[str], stop: str, include_stop: bool) -> None:
    """Add the pass-through ops feeding `node` back to (and, with include_stop, including) the nearest `stop`."""
    todo = [node]
    while todo:
        cur = todo.pop()
        for name in cur.input:
            src = producer.get(name)
            if src is None or src.name in keep:
                continue
            if src.op_type == stop:
                if include_stop:
                    keep.add(src.name)
                continue
            if src.op_type in _PASS_THROUGH:
                keep.add(src.name)
                todo.append(src)


def convert_half(src: Path, dst: Path, precision: str, islands: tuple[str, ...] = ISLANDS,
                 external: bool | None = None) -> dict:
    """Write `dst`, the fp16 or bf16 form of the fp32 graph `src` (external data when `src` had it, or when
    `external` says so). Returns what was done, for the manifest's quantization record."""
    import onnx
    from onnx import external_data_helper
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from fastblt.export.onnx_export import external_data_files

    if precision not in HALF:
        raise HalfError(f"precision {precision!r} is not a half precision; half precisions are {list(HALF)}")
    had_external = bool(external_data_files(src))
    external = had_external if external is None else external
    # shapes are inferred on the graph without its weights (a graph over 2 GiB cannot be inferred in memory)
    model = onnx.load(str(src), load_external_data=False)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    external_data_helper.load_external_data_for_model(model, str(src.parent))
    originals = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                 if t.data_type == onnx.TensorProto.FLOAT} if precision == "bf16" else {}
    keep = fp32_islands(model, islands)
    io = [v.name for v in (*model.graph.input, *model.graph.output) if not is_cache_tensor(v.name)]
    converted = convert_float_to_float16(model, keep_io_types=io, op_block_list=DEFAULT_OP_BLOCK_LIST,
                                         node_block_list=sorted(keep), disable_shape_infer=True)
    del model
    _drop_round_trips(converted.graph)
    _toposort(converted.graph)  # the converter appends its input casts after the nodes that read them
    del converted.graph.value_info[:]  # inferred for fp32; some no longer match (the checker re-infers them)
    if precision == "bf16":
        _to_bfloat16(converted, originals)
    dst.with_name(dst.name + ".data").unlink(missing_ok=True)
    if external:
        onnx.save_model(converted, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(converted, str(dst))
    half_nodes = sum(1 for n in converted.graph.node if n.name not in keep)
    del converted
    try:
        onnx.checker.check_model(str(dst), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise HalfError(f"{dst}: onnx.checker rejected the {precision} graph: {exc}") from None
    return {"tool": "onnxruntime.transformers.float16", "islands_fp32": list(islands), "fp32_nodes": len(keep),
            "half_nodes": half_nodes}


def _drop_round_trips(graph) -> None:
    """The converter wraps each blocked node in casts of its own, so a value passed between two fp32 nodes makes
    a fp32 → half → fp32 round trip, which is lossy and overflows: a norm's mean of squares (1.6e5 in the default
    model's global stack) becomes inf. Each such Cast pair is bypassed: the fp32 consumer reads the fp32 value."""
    import onnx

    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    to = {n.name: next((a.i for a in n.attribute if a.name == "to"), None) for n in graph.node if n.op_type == "Cast"}
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    for n in graph.node:  # n: Cast(to fp32) of a Cast(to fp16) of an fp32 value
        if n.op_type != "Cast" or to[n.name] != f32:
            continue
        src = producer.get(n.input[0])
        if src is None or src.op_type != "Cast" or to[src.name] != f16 or not _is_float32(graph, src.input[0]):
            continue
        if n.output[0] in outputs:  # a graph output keeps its name: the cast becomes an Identity of the fp32 value
            n.op_type, n.input[0] = "Identity", src.input[0]
            del n.attribute[:]
        else:
            rename[n.output[0]] = src.input[0]
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    used = {i for n in graph.node for i in n.input} | outputs
    keep = [n for n in graph.node if not (n.op_type == "Cast" and not any(o in used for o in n.output))]
    del graph.node[:]
    graph.node.extend(keep)


def _is_float32(graph, name: str) -> bool:
    """Whether `name` is an fp32 value: a Cast is only ever inserted by the converter on float values, so any value
    a Cast(to fp16) reads is fp32 unless it is a half graph input."""
    import onnx

    return not any(v.name == name and v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT for v in graph.input)


def _toposort(graph) -> None:
    """Reorder `graph`'s nodes so each comes after the producers of its inputs (stable otherwise)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    nodes, done = list(graph.node), []
    while nodes:
        rest = []
        for n in nodes:
            if all(i in ready for i in n.input):
                done.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):
            raise HalfError(f"graph {graph.name!r} has a cycle or an input nothing produces: "
                            f"{[i for n in rest for i in n.input if i not in ready][:5]}")
        nodes = rest
    del graph.node[:]
    graph.node.extend(done)


def _to_bfloat16(model, originals: dict[str, np.ndarray]) -> None:
    """Turn every float16 type of an fp16-converted graph into bfloat16; each weight is rounded once, from its
    fp32 value (not from its fp16 rounding, whose range ends at 65504)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    f16, bf16 = TensorProto.FLOAT16, TensorProto.BFLOAT16

    def tensor(t) -> None:
        if t.data_type != f16:
            return
        values = originals.get(t.name)
        if values is None:
            values = numpy_helper.to_array(t).astype(np.float32)
        new = onnx.TensorProto(name=t.name, dims=list(t.dims), data_type=bf16,
                               raw_data=_bf16_bits(values).tobytes())
        t.CopyFrom(new)

    _retype(model, f16, bf16, tensor)


def _retype(model, old: int, new: int, tensor) -> None:
    """Change element type `old` to `new` in a graph's inputs, outputs, value infos and Cast targets; `tensor(t)`
    converts each initializer and tensor attribute (it leaves tensors of other types alone)."""
    import onnx

    for t in model.graph.initializer:
        tensor(t)
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if value.type.tensor_type.elem_type == old:
            value.type.tensor_type.elem_type = new
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == old:
                attr.i = new
            elif attr.type == onnx.AttributeProto.TENSOR:
                tensor(attr.t)


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even bfloat16 bit patterns of fp32 values."""
    import ml_dtypes

    return np.ascontiguousarray(np.asarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16)).view(np.uint16)


def widen_bf16(src: Path, dst: Path) -> Path:
    """A float32 copy of a bf16 graph whose weights hold exactly their bf16 values: ONNX Runtime's CPU provider
    has no bf16 kernels, so this is how a CPU checks a bf16 graph's structure and rounded weights (activations
    then stay fp32; bf16 activations are measured through torch, `blt-bench precision`)."""
    import ml_dtypes
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(src))
    bf16, f32 = TensorProto.BFLOAT16, TensorProto.FLOAT

    def tensor(t) -> None:
        if t.data_type != bf16:
            return
        bits = np.frombuffer(t.raw_data, dtype=np.uint16) if t.raw_data else np.asarray(t.int32_data, np.uint16)
        values = bits.view(ml_dtypes.bfloat16).astype(np.float32).reshape(tuple(t.dims))
        t.CopyFrom(numpy_helper.from_array(values, t.name))

    _retype(model, bf16, f32, tensor)
    onnx.save_model(model, str(dst))
    return dst
