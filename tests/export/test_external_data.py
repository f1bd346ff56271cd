"""Forced external data on a tiny model through every precision: build, check, generate, and every way a
weight file can go wrong refused with a clear error naming it."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from fastblt.export import bundle as bundle_mod
from fastblt.export.bundle import BuildError, BuildOptions, build_bundle
from fastblt.export.cli import main as export_cli
from fastblt.export.quantize import modelopt_available
from fastblt.graphs.config import tiny_config
from fastblt.graphs.model import BltModel
from fastblt.graphs.spec import PATCH_CAP, dim_ranges
from fastblt.graphs.training.data import windows
from fastblt.runtime.backends.ort import OrtBackend
from fastblt.runtime.backends.torch_ref import TorchBackend
from fastblt.runtime.generator import Generator
from fastblt.runtime.manifest import BundleError, Manifest

pytest.importorskip("onnxruntime")
TEXT = b"def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n" * 4
PRECISIONS = ("fp32", "int8", "int8-dynamic", *(("fp8",) if modelopt_available() else ()))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = BltModel(tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4,), patch_threshold=3.5)).eval()
    with torch.no_grad():
        m.patcher.lm_head.weight.mul_(10.0)
        m.lm_head.weight.mul_(3.0)
    return m


@pytest.fixture(scope="module")
def external(model, tmp_path_factory):
    """Every graph's weights in external data (threshold 0), the fused layout kept, the table in bf16."""
    out = tmp_path_factory.mktemp("ext") / "bundle"
    options = BuildOptions(external_bytes=0, fused_max_bytes=1 << 40, hash_table="bfloat16", calibration_prompts=1)
    return build_bundle(model, out, PRECISIONS, engines="no", log=lambda m: None,
                        heldout=list(windows(TEXT, 96))[:2], options=options)


def test_every_file_listed_with_hash_and_size(external):
    manifest = Manifest.load(external)
    assert manifest.precisions == PRECISIONS
    listed = {f.path for _, f in manifest.listed_files()}
    on_disk = {p.relative_to(external).as_posix() for p in external.rglob("*") if p.is_file()}
    assert on_disk - listed == {"manifest.json", "build.log"}  # nothing unlisted (no stale or temporary file)
    for key, entry in manifest.graphs.items():
        for precision, gf in entry.files.items():
            assert gf.data, f"{key} {precision}: weights were not in external data"
            assert all(d.path.startswith(f"{precision}/") for d in gf.data)
    assert manifest.hash_table.dtype == "bfloat16" and manifest.hash_table.data.path.startswith("hash_table/")
    assert manifest.verify_all() == sum((external / f).stat().st_size for f in listed)


def test_no_weight_stored_twice_in_a_precision(external):
    """The hash tables live once per bundle, in no graph; within a precision every distinct weight has one place
    in its folder's weights.data (decoder_step, the decoder_blocks and fused twins share theirs)."""
    import hashlib

    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    cfg = Manifest.load(external).config
    rows = cfg.n_hash_tables * cfg.hash_vocab
    for precision in PRECISIONS:
        folder = external / precision
        assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".onnx")) == ["weights.data"]
        places: dict[bytes, set] = {}
        data = (folder / "weights.data").read_bytes()
        for path in folder.glob("*.onnx"):
            proto = onnx.load(str(path), load_external_data=False)
            for t in proto.graph.initializer:
                assert rows not in tuple(t.dims), path.name
                if uses_external_data(t):
                    info = ExternalDataInfo(t)
                    assert info.location == "weights.data"
                    raw = data[info.offset:info.offset + info.length]
                    places.setdefault(hashlib.sha256(raw).digest(), set()).add(info.offset)
        assert places and all(len(offsets) == 1 for offsets in places.values()), precision


@pytest.mark.parametrize("precision", PRECISIONS)
def test_generates_in_every_precision(external, model, precision):
    with OrtBackend(external, precision) as backend:
        gen = Generator(backend)
        ar = gen.generate("def f(x):", max_new_bytes=24)
        assert len(ar.bytes) == 24
        if precision == "fp32":  # bf16 table of an fp32 model: the fp32 graphs stay within bf16 rounding of torch
            assert backend.layout == "fused"
        blts = gen.generate("def f(x):", mode="blts", max_new_bytes=24, draft_k=4)
        assert blts.bytes == ar.bytes  # greedy BLT-S is lossless on every backend and precision


def test_fp32_equals_torch_with_an_exact_table(tmp_path):
    """An fp32 table: ORT over external data gives torch's greedy bytes in AR and BLT-S. The model has no
    max_patch_length (as HF's BLT-1B): the bundle records the cap every backend enforces and TensorRT's
    patch-length profile covers."""
    torch.manual_seed(4)
    model = BltModel(tiny_config(max_patch_length=None, patch_threshold=3.5)).eval()
    out = build_bundle(model, tmp_path / "b", ("fp32",), engines="no", log=lambda m: None,
                       heldout=list(windows(TEXT, 96))[:1],
                       options=BuildOptions(external_bytes=0, calibration_prompts=1))
    manifest = Manifest.load(out)
    assert manifest.hash_table.dtype == "float32"
    assert manifest.config.max_patch_length == PATCH_CAP == manifest.patching["max_patch_length"]
    assert dim_ranges(manifest.config)["L"][2] == PATCH_CAP
    assert not any(e.layout == "fused" for e in manifest.graphs.values())  # external standard twins: no fused copy
    with OrtBackend(out, "fp32") as ort_backend:
        assert ort_backend.layout == "standard"
        for mode in ("ar", "blts"):
            a = Generator(TorchBackend(model)).generate("class P:", mode=mode, max_new_bytes=32)
            b = Generator(ort_backend).generate("class P:", mode=mode, max_new_bytes=32)
            assert a.bytes == b.bytes, mode


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_flipped_byte_in_a_data_file_is_refused(external, tmp_path):
    bundle = _copy(external, tmp_path)
    data = bundle / "fp32" / "weights.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    result = CliRunner().invoke(export_cli, ["check", str(bundle)])
    assert result.exit_code != 0 and "fp32/weights.data: sha256 does not match" in result.output
    with pytest.raises(BundleError, match=r"weights\.data: sha256 does not match"):  # small: hashed at load
        OrtBackend(bundle, "fp32")


def test_truncated_or_missing_data_file_is_refused(external, tmp_path, monkeypatch):
    from fastblt.runtime import manifest as manifest_mod

    bundle = _copy(external, tmp_path)
    data = bundle / "int8-dynamic" / "weights.data"
    with data.open("r+b") as fh:
        fh.truncate(data.stat().st_size - 8)
    monkeypatch.setattr(manifest_mod, "VERIFY_HASH_MAX", 0)  # as for a big file: checked by size at load
    with pytest.raises(BundleError, match=r"int8-dynamic/weights\.data: \d+ bytes, manifest\.json lists \d+"):
        OrtBackend(bundle, "int8-dynamic")
    data.unlink()
    with pytest.raises(BundleError, match=r"int8-dynamic/weights\.data: missing from the bundle"):
        OrtBackend(bundle, "int8-dynamic")
    table = bundle / Manifest.load(bundle).hash_table.data.path
    table.write_bytes(table.read_bytes()[:-2])
    with pytest.raises(BundleError, match=r"tables\.bfloat16\.bin: \d+ bytes"):
        Manifest.load(bundle).open_hash_table()


def test_manifest_paths_stay_inside_the_bundle(external, tmp_path):
    bundle = _copy(external, tmp_path)
    body = json.loads((bundle / "manifest.json").read_text())
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(bundle / "fp32" / "patcher.onnx", outside)
    for bad in ("../outside.onnx", str(outside)):
        body["graphs"]["patcher"]["files"]["fp32"]["path"] = bad
        (bundle / "manifest.json").write_text(json.dumps(body))
        with pytest.raises(BundleError, match="must be relative and inside the bundle"):
            OrtBackend(bundle, "fp32", layout="standard")
    (bundle / "fp32" / "link.onnx").symlink_to(outside)
    body["graphs"]["patcher"]["files"]["fp32"]["path"] = "fp32/link.onnx"
    (bundle / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        OrtBackend(bundle, "fp32", layout="standard")


def test_full_disk_leaves_nothing(model, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle_mod, "_write_hash_table", full)
    out = tmp_path / "b"
    with pytest.raises(BuildError, match=r"the disk filled while writing .*nothing was written"):
        build_bundle(model, out, ("fp32",), engines="no", log=lambda m: None, heldout=list(windows(TEXT, 96))[:1])
    assert not out.exists() and not list(tmp_path.glob(".b.writing-*"))


def test_meta_table_without_a_source_is_refused(tmp_path):
    with torch.device("meta"):
        m = BltModel(tiny_config())
    with pytest.raises(BuildError, match="hash tables were not loaded"):
        build_bundle(m, tmp_path / "b", ("fp32",), engines="no", log=lambda m: None)
