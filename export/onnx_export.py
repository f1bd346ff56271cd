"""Export each incremental graph to ONNX (torch.export-based exporter, decomposed attention at opset 18 so
TensorRT 10.3 parses it), then onnx.checker + shape inference.

Shapes come from the graph specs: every symbolic dim becomes a named dynamic dim, decoder_block is exported
once per static block size. Example inputs use sizes ≥ 2 with a non-empty cache so nothing specialises.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastblt.graphs.spec import GraphSpec

OPSET = 18
# Graphs whose weights pass this many bytes keep them in external data (`<file>.data`); protobuf cannot hold
# more than 2 GiB and the torch exporter externalizes from 1.5 GiB on by itself (bundle setting; tests force 0).
EXTERNAL_DATA_BYTES = 1 << 30
EXAMPLE = {"b": 1, "t": 3, "P": 2, "L": 3, "T": 5, "C": 16}


class ExportError(RuntimeError):
    """A graph failed to export or to pass the ONNX checker."""


def concrete_shape(spec_shape, sizes: dict[str, int]) -> tuple[int, ...]:
    out = []
    for d in spec_shape:
        if isinstance(d, int):
            out.append(d)
        elif "+" in d:
            out.append(sum(sizes[p] for p in d.split("+")))
        else:
            out.append(sizes[d])
    return tuple(out)


def sample_feeds(spec: GraphSpec, cfg, sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random but valid inputs of the given sizes (ids in range, positions contiguous after the cache,
    masks with at least one real byte per patch, a bias with every row able to see something)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    past = sizes.get("T", 0)
    for ts in spec.inputs:
        shape = concrete_shape(ts.shape, sizes)
        name = ts.name
        if name == "ids":
            feeds[name] = rng.integers(4, 260, shape, dtype=np.int64)
        elif name in ("positions", "patch_positions"):
            feeds[name] = np.broadcast_to(np.arange(past, past + shape[1], dtype=np.int64), shape).copy()
        elif name.endswith("past_length"):  # fused layout: filled cache slots (the cache buffer holds C ≥ T + t)
            feeds[name] = np.full(shape, past, dtype=np.int32)
        elif name == "patch_mask":
            lengths = rng.integers(1, shape[2] + 1, shape[:2])
            feeds[name] = np.arange(shape[2])[None, None, :] < lengths[..., None]
        elif name == "attn_bias":
            bias = np.zeros(shape, dtype=np.float32)
            bias[..., : shape[2] // 3] = np.finfo(np.float32).min  # some keys hidden
            feeds[name] = bias
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _dynamic_shapes(spec: GraphSpec, block_size: int | None):
    from torch.export import Dim

    dims = {
        "b": Dim("batch", min=1, max=64),
        "t": Dim("seq", min=1, max=8192),
        "T": Dim("past", min=0, max=65536),
        "P": Dim("patches", min=1, max=8192),
        "L": Dim("patch_len", min=1, max=4096),
        "C": Dim("capacity", min=2, max=65536),
    }
    out = []  # positional, the structure of the forward's arguments
    for ts in spec.inputs:
        axes = {}
        for axis, d in enumerate(ts.shape):
            if isinstance(d, int) or d == "B":
                continue
            if d == "T+B":
                axes[axis] = dims["T"] + block_size
            else:
                axes[axis] = dims[d]
        out.append(axes or None)
    if "past_length" in spec.input_names:  # fused layout: forward(..., past_length, *caches)
        n = spec.input_names.index("past_length") + 1
        return (*out[:n], tuple(out[n:]))
    return tuple(out)


def export_graph(module, spec: GraphSpec, cfg, path: Path, block_size: int | None = None,
                 opset: int = OPSET, external_bytes: int = EXTERNAL_DATA_BYTES) -> Path:
    """Export one graph module to `path` and check it (by path, so graphs over protobuf's 2 GiB limit check too).
    Weights stay inline below `external_bytes` of initializers, else they go to `<name>.onnx.data` beside it."""
    import onnx
    import torch

    module.eval()  # no dropout in BLT; this keeps the exporter from warning about training mode
    sizes = dict(EXAMPLE)
    if block_size is not None:
        sizes["B"] = block_size
    feeds = sample_feeds(spec, cfg, sizes)
    args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    try:
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=opset, input_names=list(spec.input_names),
            output_names=list(spec.output_names), dynamic_shapes=_dynamic_shapes(spec, block_size),
            external_data=False, optimize=True, verbose=False)
        external = _initializer_bytes(program) > external_bytes
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)  # never append to a stale data file
        program.save(str(path), external_data=external)
        del program
    except Exception as exc:  # the exporter raises many types; one clear message names the graph
        raise ExportError(f"exporting graph {spec.name!r} failed: {type(exc).__name__}: {str(exc)[:2000]}") from exc
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker rejected graph {spec.name!r}: {exc}") from None
    return path


def _initializer_bytes(program) -> int:
    """Bytes of the exported graph's weights (its initializers), read from the IR without serializing it."""
    total = 0
    for value in program.model.graph.initializers.values():
        tensor = value.const_value
        total += getattr(tensor, "nbytes", 0) if tensor is not None else 0
    return total


def external_data_files(path: Path) -> list[Path]:
    """The external-data files an ONNX file references (read from its proto, without loading the data)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    names: list[str] = []
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            location = next(e.value for e in tensor.external_data if e.key == "location")
            if location not in names:
                names.append(location)
    return [path.parent / n for n in names]


SHARED_DATA = "weights.data"  # one per precision folder: every weight of its graphs, each stored once
SHARED_MIN_BYTES = 1024  # smaller tensors (shapes, scalars) stay inline in their graph
ALIGN = 4096  # page-aligned offsets, so ONNX Runtime can map each weight in place


def share_weights(folder: Path, paths: list[Path]) -> Path | None:
    """Move the weights of `paths` (graphs of one precision folder) into one `weights.data`, storing each distinct
    tensor once: decoder_step and every decoder_block hold the same decoder, a fused graph most of its standard
    twin's weights. Graphs are rewritten one at a time (each proto without the others' data in memory); the
    data files they used before are removed. Returns the shared file, or None when no tensor is large enough."""
    import hashlib
    import os

    import onnx
    from onnx.external_data_helper import uses_external_data

    shared, index, offset, old = folder / SHARED_DATA, {}, 0, set()
    partial = folder / (SHARED_DATA + ".writing")
    with partial.open("wb") as out:
        for path in paths:
            model = onnx.load(str(path), load_external_data=False)
            for tensor in model.graph.initializer:
                raw = _tensor_bytes(tensor, path.parent, old)
                if raw is None or len(raw) < SHARED_MIN_BYTES:
                    if raw is not None and uses_external_data(tensor):  # a small external tensor goes inline
                        del tensor.external_data[:]
                        tensor.data_location = onnx.TensorProto.DEFAULT
                        tensor.raw_data = raw
                    continue
                key = hashlib.sha256(raw).digest()
                if key not in index:
                    pad = -offset % ALIGN
                    out.write(b"\0" * pad)
                    index[key] = (offset + pad, len(raw))
                    out.write(raw)
                    offset += pad + len(raw)
                tensor.ClearField("raw_data")
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for name, value in zip(("location", "offset", "length"), (SHARED_DATA, *index[key]), strict=True):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = name, str(value)
            tmp = path.with_name(path.name + ".writing")
            onnx.save_model(model, str(tmp))
            os.replace(tmp, path)
            del model
    for f in old:
        f.unlink(missing_ok=True)
    if not index:
        partial.unlink()
        return None
    os.replace(partial, shared)
    return shared


def _tensor_bytes(tensor, base: Path, used: set) -> bytes | None:
    """A tensor's stored bytes: its raw_data, or the range its external-data entry names (noting the file)."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    if uses_external_data(tensor):
        info = ExternalDataInfo(tensor)
        file = base / info.location
        used.add(file)
        with file.open("rb") as fh:
            fh.seek(info.offset or 0)
            return fh.read(info.length) if info.length else fh.read()
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return None


def weight_bytes(path: Path) -> int:
    """Bytes of one graph's weights: its inline initializers and the ranges it reads from external data."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    return sum(ExternalDataInfo(t).length or 0 if uses_external_data(t) else len(t.raw_data)
               for t in model.graph.initializer)
