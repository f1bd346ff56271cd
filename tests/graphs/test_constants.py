"""Shared constants: graphs never import the runtime, the constants module is light, keys round-trip."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fastblt.graphs import constants
from fastblt.graphs.config import PRESETS, tiny_config
from fastblt.graphs.spec import fused_graph_specs, graph_specs

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Every module a file imports, at top level or inside a function (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_graphs_never_import_the_runtime():
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p) if m.startswith("fastblt.runtime"))
                 for p in (ROOT / "graphs").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_constants_import_nothing_heavy_and_graphs_data_leaves_the_runtime_unloaded(tmp_path):
    code = ("import sys, fastblt.graphs.constants\n"
            "print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))\n"
            "import fastblt.graphs.training.data, fastblt.graphs.patching\n"
            "print(sorted(m for m in sys.modules if m.startswith('fastblt.runtime')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "[]"], out.stdout


@pytest.mark.parametrize("cfg", [tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8)),
                                 PRESETS["tiny"]()], ids=["bltd", "preset"])
def test_every_spec_dtype_is_a_listed_numpy_dtype_name(cfg):
    specs = [*graph_specs(cfg).values(), *fused_graph_specs(cfg).values()]
    dtypes = {ts.dtype for spec in specs for ts in (*spec.inputs, *spec.outputs)}
    assert dtypes <= set(constants.TENSOR_DTYPES)
    assert all(np.dtype(name).name == name for name in dtypes)


def test_graph_keys_round_trip_and_feed_key_reads_the_block_width():
    assert constants.split_graph_key(constants.graph_key("decoder_block", 16)) == ("decoder_block", 16)
    assert constants.split_graph_key(constants.graph_key("encoder", 16)) == ("encoder", None)
    feeds = {"states": np.zeros((1, 8, 4), np.float32)}
    assert constants.feed_key("decoder_block", feeds) == "decoder_block_8"
    assert constants.feed_key("decoder_step", feeds) == "decoder_step"


def test_special_ids_fit_the_vocabulary():
    """The BLT-D ids a model gets by default sit just above the bytes, and a config with them validates."""
    assert constants.OFFSET + 256 == constants.BYTE_VOCAB == constants.MASK_ID < constants.PAD_ID
    assert constants.PAD_ID < constants.DIFFUSION_VOCAB
    tiny_config(vocab_size=constants.DIFFUSION_VOCAB, mask_id=constants.MASK_ID, pad_id=constants.PAD_ID).validate()
