"""The typed manifest: today's format_version 2 files read, every field is checked, the writer round-trips."""

from __future__ import annotations

import json

import pytest

from fastblt.graphs.config import tiny_config
from fastblt.graphs.spec import fused_graph_specs, graph_specs
from fastblt.runtime.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    BundleError,
    DataFile,
    GraphFile,
    Manifest,
    write_manifest,
)

CFG = tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8))


def _v1(**changes) -> dict:
    """A manifest as `blt-export build` writes format_version 2 (files not needed to read it)."""
    file = {"path": "fp32/patcher.onnx", "sha256": "ab" * 32, "bytes": 123,
            "data": [{"path": "fp32/weights.data", "sha256": "cd" * 32, "bytes": 4096}]}
    rows = CFG.n_hash_tables * CFG.hash_vocab
    data = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "hash_table": {"rows": rows, "dim": CFG.encoder.dim, "dtype": "bfloat16",
                       "data": {"path": "hash_table/tables.bfloat16.bin", "sha256": "ef" * 32,
                                "bytes": rows * CFG.encoder.dim * 2}},
        "created": "2026-01-01T00:00:00+00:00", "model": CFG.to_dict(),
        "opset": 18, "block_sizes": [4], "special_ids": {"boe": 0, "bos": 1, "eos": 2, "mask": 260, "pad": 261},
        "patching": {"threshold": 1.5, "max_patch_length": None}, "precisions": ["fp32"],
        "graphs": {"patcher": {"graph": "patcher", "block_size": None, "files": {"fp32": file}},
                   "decoder_block_4": {"graph": "decoder_block", "block_size": 4,
                                       "files": {"fp32": {**file, "path": "fp32/decoder_block_4.onnx"}}},
                   "fused_patcher": {"graph": "patcher", "block_size": None, "layout": "fused",
                                     "files": {"fp32": {**file, "path": "fp32/fused_patcher.onnx"}}}},
        "validation": {"patcher": {"sample": {}}}, "quantization": {}, "engines": [],
        "tools": {"python": "3.11.0"}, "quality": {"fp32": {"heldout_bpb": 2.5}},
    }
    data.update(changes)
    return data


def _write(root, data) -> None:
    root.mkdir(exist_ok=True)
    (root / MANIFEST).write_text(json.dumps(data))


def test_a_version_1_manifest_is_refused_with_the_fix(tmp_path):
    """Version 1 bundles carry the hash tables inside their encoder graphs; this runtime feeds hash_embeds."""
    _write(tmp_path, _v1(format_version=1))
    with pytest.raises(BundleError, match=r"format_version 1 is not supported.*rebuild the bundle"):
        Manifest.load(tmp_path)


def test_a_current_manifest_reads_into_typed_fields(tmp_path):
    _write(tmp_path, _v1())
    m = Manifest.load(tmp_path)
    assert m.config == CFG and m.precisions == ("fp32",) and m.block_sizes == (4,) and m.opset == 18
    assert m.graphs["decoder_block_4"].block_size == 4 and m.graphs["fused_patcher"].layout == "fused"
    data = (DataFile("fp32/weights.data", "cd" * 32, 4096),)
    assert m.file_entry("patcher", "fp32") == GraphFile("fp32/patcher.onnx", "ab" * 32, 123, data)
    assert m.file_entry("patcher", "fp32").digest != "ab" * 32  # engine keys cover the data file
    assert m.hash_table.dtype == "bfloat16" and m.hash_table.scales is None
    assert m.standard_keys() == ["patcher", "decoder_block_4"]
    assert m.spec("decoder_block_4") == graph_specs(CFG)["decoder_block"]
    assert m.spec("fused_patcher") == fused_graph_specs(CFG)["patcher"]


def test_the_writer_round_trips_what_the_reader_read(tmp_path):
    data = _v1()
    _write(tmp_path / "a", data)
    m = Manifest.load(tmp_path / "a")
    m.write(tmp_path / "a")
    assert json.loads((tmp_path / "a" / MANIFEST).read_text()) == data
    write_manifest(tmp_path / "a", {k: v for k, v in data.items() if k not in ("format", "format_version")})
    assert Manifest.load(tmp_path / "a") == m


@pytest.mark.parametrize(("change", "match"), [
    ({"precisions": "fp32"}, r"field 'precisions' must be list, got str"),
    ({"model": None}, r"field 'model' must be dict, got NoneType"),
    ({"block_sizes": [4, "8"]}, r"field 'block_sizes' must be a list of integers"),
    ({"engines": [{"precision": "fp32", "path": "e.plan"}]}, r"engines\[0\]: field 'graph_key' is missing"),
    ({"graphs": {"patcher": {"graph": "patcher", "files": {"fp32": {"path": "p.onnx"}}}}},
     r"graphs.patcher.files.fp32: field 'sha256' is missing"),
    ({"graphs": {"patcher": {"graph": "patcher", "layout": "sideways"}}}, r"layout 'sideways' must be one of"),
    ({"colour": "blue"}, r"unknown fields \['colour'\].*upgrade fastblt or rebuild"),
    ({"hash_table": {"rows": 1, "dim": 1, "dtype": "int4", "data": {}}}, r"dtype 'int4' must be one of"),
    ({"hash_table": {"rows": 1, "dim": 1, "dtype": "int8", "data": {"path": "t", "sha256": "a", "bytes": 1}}},
     r"an int8 table needs field 'scales'"),
    ({"graphs": {"patcher": {"graph": "patcher", "files": {"fp32": {"path": "p.onnx", "sha256": "a",
                                                                   "data": [{"path": "d"}]}}}}},
     r"files.fp32.data\[0\]: field 'sha256' is missing"),
])
def test_a_bad_field_is_named_with_the_fix(tmp_path, change, match):
    _write(tmp_path, _v1(**change))
    with pytest.raises(BundleError, match=match):
        Manifest.load(tmp_path)


def test_a_bad_model_config_names_the_model_field(tmp_path):
    _write(tmp_path, _v1(model={**CFG.to_dict(), "vocab_size": 3}))
    with pytest.raises(BundleError, match=r"field 'model': vocab_size=3 must be"):
        Manifest.load(tmp_path)


def test_the_writer_refuses_what_the_reader_would_refuse(tmp_path):
    with pytest.raises(BundleError, match="being written.*field 'model' is missing"):
        write_manifest(tmp_path, {"precisions": ["fp32"]})
    assert not (tmp_path / MANIFEST).exists()


def test_unknown_graph_and_precision_name_the_fix(tmp_path):
    _write(tmp_path, _v1())
    m = Manifest.load(tmp_path)
    with pytest.raises(BundleError, match=r"no graph 'encoder' \(graphs: "):
        m.graph_file("encoder")
    with pytest.raises(BundleError, match=r"no int8 file.*--precision int8"):
        m.graph_file("patcher", "int8")


REQUIRED = ("created", "model", "opset", "block_sizes", "special_ids", "patching", "precisions", "graphs",
            "validation", "quantization", "engines", "tools", "quality", "hash_table")


@pytest.mark.parametrize("name", REQUIRED)
def test_every_missing_field_is_named_with_the_fix(tmp_path, name):
    """docs/bundles.md: a missing field is a BundleError naming the field and the fix (a rebuild)."""
    data = _v1()
    del data[name]
    _write(tmp_path, data)
    with pytest.raises(BundleError, match=rf"field {name!r} is missing; rebuild the bundle with `blt-export build`"):
        Manifest.load(tmp_path)


def test_the_required_fields_are_every_field_of_the_schema():
    import dataclasses

    assert set(REQUIRED) == {f.name for f in dataclasses.fields(Manifest)} - {"root"}


def test_a_manifest_without_graphs_names_the_fix(tmp_path):
    _write(tmp_path, _v1(graphs={}))
    with pytest.raises(BundleError, match=r"field 'graphs' lists no graph; rebuild the bundle"):
        Manifest.load(tmp_path)
    _write(tmp_path, _v1())
    with pytest.raises(BundleError, match=r"no graph 'encoder' \(graphs: .*\); rebuild the bundle"):
        Manifest.load(tmp_path).entry("encoder")
