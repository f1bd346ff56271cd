"""Checkpoints: native (config.json + model.safetensors) and HF-format BLT directories. Never unpickles.

A native checkpoint stores the fastblt config and tensors named as in `BltModel.state_dict()`; an HF BLT
(`model_type: "blt"`) stores the same tensors under a `model.` prefix with `lm_head.weight` at the top.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from fastblt.graphs.atomic import atomic_dir
from fastblt.graphs.config import BltConfig, ConfigError, TransformerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


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


def _weights_files(root: Path) -> list[Path]:
    single = root / WEIGHTS_FILE
    if single.is_file():
        return [single]
    index = root / (WEIGHTS_FILE + ".index.json")
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from None
        files = [root / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shard(s) that are missing: {missing}")
        return files
    pickles = [p for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        _refuse_pickle(pickles[0])
    raise CheckpointError(f"{root}: missing {WEIGHTS_FILE} (the model weights); a checkpoint directory holds "
                          f"{CONFIG_FILE} + {WEIGHTS_FILE}")


def _read_tensors(files: list[Path]) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for f in files:
        if _is_pickle(f):
            _refuse_pickle(f)
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{f}: not a readable safetensors file ({exc})") from None
    return tensors


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


def load_model(path: str | Path, dtype: Any = None):
    """Load a native or HF-format BLT directory; returns `BltModel` in eval mode (fp32 unless `dtype`)."""
    from fastblt.graphs.model import BltModel

    root = Path(path)
    cfg, kind = read_config(root)
    tensors = _read_tensors(_weights_files(root))
    if kind == "hf":
        tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    model = BltModel(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{root}: weights do not match the config: missing {missing[:5]}{' …' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{root}: tensor {name} has shape {tuple(tensor.shape)}, the config implies "
                                  f"{tuple(expected[name].shape)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def stored_dtype(path: str | Path):
    """The floating dtype a checkpoint's weights are stored in, so a derived checkpoint keeps its precision."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        with safe_open(str(_weights_files(path)[0]), "pt") as fh:
            for key in fh.keys():
                dtype = fh.get_slice(key).get_dtype()
                if dtype in ("BF16", "F16", "F32"):
                    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[dtype]
    return torch.float32


def save_model(model, path: str | Path, dtype: Any = None, extra_files: dict[str, str] | None = None) -> Path:
    """Write a native checkpoint atomically (temp directory, then rename)."""
    from safetensors.torch import save_file

    dest = Path(path)
    with atomic_dir(dest) as tmp:
        tensors = {k: (v.to(dtype) if dtype is not None else v).detach().contiguous()
                   for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "producer": "fastblt"})
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
        )
        return cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{source} (HF BLT config): {exc}") from None
