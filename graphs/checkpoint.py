"""Checkpoints: native (config.json + safetensors) and HF-format BLT directories. Never unpickles.

A native checkpoint stores the fastblt config and tensors named as in `BltModel.state_dict()`; an HF BLT
(`model_type: "blt"`) stores the same tensors under a `model.` prefix with `lm_head.weight` at the top. Either
may be one `model.safetensors` or shards listed by `model.safetensors.index.json`.

Loading streams: the model is built on the meta device and each tensor is read from its file in row chunks,
converted once into its final dtype, so a BLT-1B (17 GiB in fp32) loads in about its own size of memory.
Headers are parsed here (8-byte length + JSON) so inspection and every consistency check read no weights.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastblt.graphs.atomic import atomic_dir
from fastblt.graphs.config import BltConfig, ConfigError, TransformerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = WEIGHTS_FILE + ".index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# bytes per element of each safetensors dtype
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
                "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}
CHUNK_BYTES = 64 << 20  # rows read or written per step: bounds the memory a conversion or a stream needs
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed or of an unsupported kind; the message names the file and the fix."""


def _is_pickle(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    if head[:1] == b"\x80":  # pickle protocol ≥ 2
        return True
    return zipfile.is_zipfile(path) and any(n.endswith("data.pkl") for n in zipfile.ZipFile(path).namelist())


def _refuse_pickle(path: Path) -> None:
    raise CheckpointError(
        f"{path}: this is a pickle (torch.save) file; fastblt never unpickles checkpoints because loading one "
        "can run arbitrary code. Convert it to safetensors (config.json + model.safetensors) where you trust it."
    )


# ---- safetensors headers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    """Where one stored tensor lives: file, key, dtype (safetensors name), shape."""

    file: Path
    key: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


def _unreadable(file: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{file}: not a readable safetensors file ({why}); re-download or re-write it")


def _header(file: Path) -> dict[str, _Entry]:
    """The tensors a safetensors file declares, checked against its size (a truncated copy is caught here,
    before any weight is read)."""
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            raw = fh.read(n) if 2 <= n <= min(size - 8, MAX_HEADER_BYTES) else b""
    except OSError as exc:
        raise _unreadable(file, str(exc)) from None
    if raw[:1] != b"{":  # not safetensors; a length whose first byte is 0x80 must not read as a pickle
        if _is_pickle(file):
            _refuse_pickle(file)
        raise _unreadable(file, f"{size:,} bytes cannot hold the header it announces" if not raw
                          else "the header is not a JSON object")
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _unreadable(file, f"header is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise _unreadable(file, "header is not a JSON object")
    entries: dict[str, _Entry] = {}
    end = 0
    for key, info in meta.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            ok = (dtype in DTYPE_BYTES and all(isinstance(d, int) and d >= 0 for d in shape)
                  and isinstance(a, int) and isinstance(b, int)
                  and b - a == math.prod(shape) * DTYPE_BYTES[dtype] and a >= 0)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise _unreadable(file, f"tensor {key!r} has a malformed header entry {info!r}")
        entries[key] = _Entry(file, key, dtype, shape)
        end = max(end, b)
    expected = 8 + n + end
    if size < expected:
        raise _unreadable(file, f"truncated: {size:,} bytes on disk, its header describes {expected:,}")
    if size > expected:
        raise _unreadable(file, f"{size - expected:,} bytes after the last tensor the header describes")
    return entries


def _weights_files(root: Path) -> list[Path]:
    """The safetensors file(s) of a checkpoint directory: model.safetensors, or the shards its index lists."""
    single = root / WEIGHTS_FILE
    if single.is_file():
        return [single]
    if (root / INDEX_FILE).is_file():
        return [root / s for s in sorted(set(_weight_map(root).values()))]
    pickles = sorted(p for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        _refuse_pickle(pickles[0])
    raise CheckpointError(f"{root}: missing {WEIGHTS_FILE} (the model weights); a checkpoint directory holds "
                          f"{CONFIG_FILE} + {WEIGHTS_FILE} (or shards listed in {INDEX_FILE})")


def _weight_map(root: Path) -> dict[str, str]:
    index = root / INDEX_FILE
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError) as exc:
        raise CheckpointError(f"{index}: not a valid safetensors index ({exc!r}); it needs "
                              '{"weight_map": {tensor: shard file}}') from None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v and Path(v).name == v for k, v in weight_map.items()):
        raise CheckpointError(f"{index}: weight_map must map each tensor name to a shard file in {root}")
    missing = sorted({s for s in weight_map.values() if not (root / s).is_file()})
    if missing:
        raise CheckpointError(f"{index} lists shard(s) that are missing: {missing}; copy them into {root} "
                              "(or re-download the checkpoint)")
    return weight_map


def _stored_entries(root: Path) -> dict[str, _Entry]:
    """Checkpoint key → entry, from headers only; every tensor the index names must be in its shard."""
    files = _weights_files(root)
    if files == [root / WEIGHTS_FILE]:
        return _header(files[0])
    weight_map = _weight_map(root)
    headers = {f.name: _header(f) for f in files}
    entries = {}
    for key, shard in weight_map.items():
        if key not in headers[shard]:
            raise CheckpointError(f"{root / INDEX_FILE} names tensor {key!r} in {shard}, but {root / shard} does not "
                                  "hold it; re-download that shard or re-write the index")
        entries[key] = headers[shard][key]
    return entries


def _hf_key(name: str) -> str:
    return name if name == "lm_head.weight" else "model." + name


def _entries(root: Path, kind: str) -> dict[str, _Entry]:
    """fastblt parameter name → stored entry."""
    stored = _stored_entries(root)
    return {k.removeprefix("model.") if kind == "hf" else k: e for k, e in stored.items()}


def checkpoint_index(path: str | Path) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """fastblt tensor name → (file, safetensors dtype, shape), read from the headers alone (no weights)."""
    root = Path(path)
    _, kind = read_config(root)
    return {name: (str(e.file), e.dtype, e.shape) for name, e in _entries(root, kind).items()}


@dataclass(frozen=True)
class CheckpointTensor:
    """One stored tensor, read lazily: `rows` streams a slice, so a table larger than memory never loads whole."""

    name: str
    file: Path
    key: str
    shape: tuple[int, ...]
    dtype: Any  # torch dtype as stored

    def rows(self, r0: int, r1: int):
        """Rows r0:r1 as a CPU tensor in the stored dtype."""
        from safetensors import safe_open

        if not self.shape or not 0 <= r0 <= r1 <= self.shape[0]:
            raise ValueError(f"{self.name}: rows {r0}:{r1} are outside its {self.shape[:1]} rows")
        try:
            with safe_open(str(self.file), "pt") as fh:
                return fh.get_slice(self.key)[r0:r1]
        except Exception as exc:  # safetensors raises its own error types; the file is the actionable part
            raise _unreadable(self.file, f"reading {self.key}: {exc}") from None


def checkpoint_tensor(path: str | Path, name: str) -> CheckpointTensor:
    """The stored tensor `name` (fastblt naming) of a checkpoint directory, for streaming it row by row."""
    import torch

    root = Path(path)
    _, kind = read_config(root)
    entries = _entries(root, kind)
    if name not in entries:
        raise CheckpointError(f"{root}: holds no tensor {name!r} (it has {len(entries)} tensors, e.g. "
                              f"{sorted(entries)[:3]})")
    e = entries[name]
    return CheckpointTensor(name, e.file, e.key, e.shape, getattr(torch, TORCH_DTYPES[e.dtype]))


# ---- config ---------------------------------------------------------------------------------------------
def read_config(path: str | Path) -> tuple[BltConfig, str]:
    """(config, kind) of a checkpoint directory; kind is "native" or "hf"."""
    root = Path(path)
    if root.is_file():
        if _is_pickle(root):
            _refuse_pickle(root)
        raise CheckpointError(f"{root} is a file; pass the checkpoint directory ({CONFIG_FILE} + {WEIGHTS_FILE})")
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint directory")
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{root}: missing {CONFIG_FILE}; a checkpoint directory holds "
                              f"{CONFIG_FILE} + {WEIGHTS_FILE}")
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and data.get("model_type") == "blt":
        return config_from_hf(data, str(cfg_path)), "hf"
    if isinstance(data, dict) and "model_type" in data:
        raise CheckpointError(f"{cfg_path}: model_type={data['model_type']!r} is not a BLT (expected 'blt')")
    return BltConfig.from_dict(data, str(cfg_path)), "native"


# ---- loading ----------------------------------------------------------------------------------------------
def _read_into(entry: _Entry, out) -> None:
    """Copy a stored tensor into `out` (any dtype) chunk by chunk: one conversion, never a second full copy.
    The file is reopened per chunk because safetensors maps it: pages read through one handle stay resident
    until the handle goes, which for a 6 GiB table would double the memory a load needs."""
    from safetensors import safe_open

    row_bytes = max(1, entry.nbytes // entry.shape[0]) if entry.shape and entry.shape[0] else 1
    step = max(1, CHUNK_BYTES // row_bytes)
    try:
        if not entry.shape:
            with safe_open(str(entry.file), "pt") as fh:
                out.copy_(fh.get_tensor(entry.key))
            return
        for r0 in range(0, entry.shape[0], step):
            with safe_open(str(entry.file), "pt") as fh:
                out[r0:r0 + step].copy_(fh.get_slice(entry.key)[r0:r0 + step])
    except Exception as exc:  # safetensors raises its own error types; the file is the actionable part
        raise _unreadable(entry.file, f"reading {entry.key}: {exc}") from None


def _rebuild_buffers(model, dtype) -> None:
    """Non-persistent buffers (RoPE tables) are not in a checkpoint: compute them on the CPU again, in the
    dtype `Module.to(dtype)` would have given them."""
    import torch

    from fastblt.graphs.layers import Rope, Stack

    for module in model.modules():
        if isinstance(module, Stack):
            module.rotary_emb = Rope(module.cfg.head_dim, module.cfg.rope_theta)
            if dtype != torch.float32:
                module.rotary_emb.to(dtype)
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"buffers {left} have no CPU rebuild in checkpoint._rebuild_buffers")


def load_model(path: str | Path, dtype: Any = None, *, skip: Iterable[str] = ()):
    """Load a native or HF-format BLT directory (one file or shards); returns `BltModel` in eval mode, fp32
    unless `dtype`. Peak memory is the model in `dtype` plus one chunk. Tensors named in `skip` are not read:
    they stay on the meta device (for callers that stream them from the checkpoint themselves)."""
    import torch
    from torch import nn

    from fastblt.graphs.model import BltModel

    root = Path(path)
    cfg, kind = read_config(root)
    target = torch.float32 if dtype is None else dtype
    if not isinstance(target, torch.dtype) or not target.is_floating_point:
        raise ValueError(f"dtype={dtype!r} must be a floating torch dtype (torch.float32, bfloat16 or float16)")
    entries = _entries(root, kind)
    with torch.device("meta"):
        model = BltModel(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    skip = set(skip)
    if skip - set(expected):
        raise ValueError(f"skip names {sorted(skip - set(expected))} are not tensors of this model")
    missing = sorted(set(expected) - set(entries) - skip)
    unexpected = sorted(set(entries) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{root}: weights do not match the config: missing {missing[:5]}{' …' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}"
        )
    for name, e in entries.items():
        if e.shape != expected[name]:
            raise CheckpointError(f"{root}: tensor {name} has shape {e.shape}, the config implies {expected[name]} "
                                  f"(stored in {e.file.name}); the config and the weights are from different models")
    state = {}
    for name, shape in expected.items():
        if name not in skip:
            state[name] = torch.empty(shape, dtype=target)
            _read_into(entries[name], state[name])
    model.load_state_dict(state, strict=False, assign=True)
    for name in skip:
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        old = getattr(module, leaf)
        setattr(module, leaf, nn.Parameter(torch.empty(old.shape, dtype=target, device="meta"),
                                           requires_grad=old.requires_grad))
    _rebuild_buffers(model, target)
    return model.eval()


def stored_dtype(path: str | Path):
    """The floating dtype a checkpoint's weights are stored in, so a derived checkpoint keeps its precision."""
    import torch

    path = Path(path)
    if path.is_dir():
        for e in _header(_weights_files(path)[0]).values():
            if e.dtype in ("BF16", "F16", "F32"):
                return getattr(torch, TORCH_DTYPES[e.dtype])
    return torch.float32


# ---- writing ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSource:
    """A tensor to write: its key, safetensors dtype, shape, and a producer of its row chunks (contiguous CPU
    tensors in that dtype, in order), so a writer never needs the whole tensor in memory."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[Any]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


def safetensors_dtype(dtype) -> str:
    """safetensors' name of a torch dtype."""
    names = {v: k for k, v in TORCH_DTYPES.items()}
    name = str(dtype).removeprefix("torch.")
    if name not in names:
        raise ValueError(f"dtype {dtype} has no safetensors name")
    return names[name]


def _write_file(file: Path, sources: list[TensorSource], metadata: dict[str, str]) -> None:
    """One safetensors file, header first, then each tensor's chunks straight from memory (no byte copies)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for s in sources:
        header[s.key] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with file.open("wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for s in sources:
            written = 0
            for chunk in s.chunks():
                data = chunk.detach().contiguous().reshape(-1).view(_uint8()).numpy()
                fh.write(memoryview(data))
                written += data.nbytes
            if written != s.nbytes:
                raise RuntimeError(f"{s.key}: wrote {written} bytes, its shape {s.shape} needs {s.nbytes}")
    file.chmod(0o644)


def _uint8():
    import torch

    return torch.uint8


def write_shards(root: Path, sources: list[TensorSource], max_shard_bytes: int | None,
                 metadata: dict[str, str] | None = None) -> list[Path]:
    """Write tensors as `model.safetensors`, or as `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`
    when they exceed `max_shard_bytes` (a tensor larger than a shard gets a shard of its own; none is split)."""
    metadata = {"format": "pt", "producer": "fastblt", **(metadata or {})}
    groups: list[list[TensorSource]] = [[]]
    size = 0
    for s in sources:
        if max_shard_bytes is not None and groups[-1] and size + s.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(s)
        size += s.nbytes
    if len(groups) == 1:
        _write_file(root / WEIGHTS_FILE, groups[0], metadata)
        return [root / WEIGHTS_FILE]
    files, weight_map = [], {}
    for i, group in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        _write_file(root / name, group, metadata)
        files.append(root / name)
        weight_map.update({s.key: name for s in group})
    index = {"metadata": {"total_size": sum(s.nbytes for s in sources)}, "weight_map": weight_map}
    (root / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return files


def _tensor_chunks(tensor, dtype):
    """Row chunks of an in-memory tensor, each converted on its own (a dtype change never copies it whole)."""
    def chunks():
        t = tensor.detach()
        if t.dim() == 0 or t.shape[0] == 0:
            yield t.to(dtype)
            return
        step = max(1, CHUNK_BYTES // max(1, t[0].numel() * t.element_size()))
        for r0 in range(0, t.shape[0], step):
            yield t[r0:r0 + step].to(dtype)
    return chunks


def save_model(model, path: str | Path, dtype: Any = None, extra_files: dict[str, str] | None = None, *,
               max_shard_bytes: int | None = None) -> Path:
    """Write a native checkpoint atomically (temp directory, then rename); sharded with an index when the
    weights exceed `max_shard_bytes`."""
    dest = Path(path)
    sources = []
    for name, tensor in model.state_dict().items():
        if tensor.is_meta:
            raise ValueError(f"{name} is on the meta device (loaded with skip=); load it to save the model")
        target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        sources.append(TensorSource(name, safetensors_dtype(target), tuple(tensor.shape),
                                    _tensor_chunks(tensor, target)))
    with atomic_dir(dest) as tmp:
        write_shards(tmp, sources, max_shard_bytes)
        (tmp / CONFIG_FILE).write_text(model.config.to_json(), encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return dest


# ---- HF BltConfig → fastblt config ------------------------------------------------------------------------
def _hf_stack(sub: dict[str, Any], where: str, window: int | None, theta: float,
              max_positions: int = 24576) -> TransformerConfig:
    """One HF sub-config; a missing optional field takes HF's own default (so a terse config means in fastblt
    what it means in transformers)."""
    def need(key: str) -> Any:
        if key not in sub:
            raise ConfigError(f"{where}.{key} is missing")
        return sub[key]

    rope = sub.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"{where}.rope_parameters.rope_type={rope.get('rope_type')!r} is not supported "
                          "(only 'default' RoPE)")
    dim, heads = need("hidden_size"), need("num_attention_heads")
    ffn = sub.get("intermediate_size") or int(8 * dim / 3)
    return TransformerConfig(
        dim=dim, n_layers=need("num_hidden_layers"), n_heads=heads,
        n_kv_heads=sub.get("num_key_value_heads") or None, ffn_dim=ffn,
        rope_theta=float(rope.get("rope_theta", sub.get("rope_theta", theta))),
        norm_eps=float(sub.get("rms_norm_eps", 1e-5)), window=window,
        max_positions=int(sub.get("max_position_embeddings", max_positions)),
    )


# BLT-D's fields have no HF equivalent; an HF config may carry them under this key (transformers keeps unknown
# keys as attributes and ignores them), e.g. a random-init BLT-1B shape with a diffusion decoder for scale tests.
DIFFUSION_KEY = "fastblt_diffusion"


def _diffusion_fields(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"mask_id", "pad_id", "block_sizes"}:
        raise ConfigError(f"{DIFFUSION_KEY} must be an object with mask_id, pad_id and block_sizes")
    return {"mask_id": value.get("mask_id"), "pad_id": value.get("pad_id"),
            "block_sizes": tuple(value.get("block_sizes") or ())}


def config_from_hf(data: dict[str, Any], source: str = "config.json") -> BltConfig:
    """Map an HF `BltConfig` JSON onto fastblt's config; unsupported variants get a clear error."""
    try:
        if data.get("patching_mode", "entropy") != "entropy":
            raise ConfigError(f"patching_mode={data.get('patching_mode')!r} is not supported (only 'entropy')")
        subs = {name: data.get(name) for name in ("patcher_config", "encoder_config", "decoder_config",
                                                   "global_config")}
        for name, sub in subs.items():
            if not isinstance(sub, dict):
                raise ConfigError(f"{name} is missing (an HF BLT config has all four sub-configs)")
        enc, dec = subs["encoder_config"], subs["decoder_config"]
        if enc.get("cross_attn_all_layers"):
            raise ConfigError("encoder_config.cross_attn_all_layers=true is not supported (released BLTs pool once "
                              "after the last encoder layer)")
        k = data.get("cross_attn_k", 2)
        for name, sub in (("encoder_config", enc), ("decoder_config", dec)):
            if sub.get("cross_attn_k", k) != k:
                raise ConfigError(f"{name}.cross_attn_k={sub.get('cross_attn_k')} differs from cross_attn_k={k}")
        window = data.get("local_attention_window_len", 512)
        cfg = BltConfig(
            patcher=_hf_stack(subs["patcher_config"], "patcher_config",
                              subs["patcher_config"].get("sliding_window", 512), 10000.0, 8192),
            encoder=_hf_stack(enc, "encoder_config", window, 500000.0),
            global_transformer=_hf_stack(subs["global_config"], "global_config", None, 500000.0, 4096),
            decoder=_hf_stack(dec, "decoder_config", window, 500000.0),
            vocab_size=int(data.get("vocab_size", 260)),
            cross_attn_k=k,
            decoder_cross_attn_all_layers=bool(dec.get("cross_attn_all_layers", True)),
            hash_sizes=tuple(data.get("encoder_hash_byte_group_size") or (3, 4, 5, 6, 7, 8)),
            hash_vocab=int(data.get("encoder_hash_byte_group_vocab", 500002)),
            hash_functions=int(data.get("encoder_hash_byte_group_nb_functions", 1)),
            patch_threshold=float(data.get("patching_threshold", 1.335442066192627)),
            max_patch_length=data.get("max_patch_length"),
            **_diffusion_fields(data.get(DIFFUSION_KEY)),
        )
        return cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{source} (HF BLT config): {exc}") from None
