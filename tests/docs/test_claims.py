"""What README.md and docs/ promise about behaviour that their runnable examples alone do not pin down: the
stream events each mode yields, `inspect BUNDLE --json`, a staged build's quantize step, and `blt-export engine`
on a machine without TensorRT."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastblt.export.cli import main as export_main

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("onnxruntime")

# docs: README.md "Python API" — the events each mode yields besides text and done
MODE_EVENTS = {"ar": set(), "bltd": {"unmask"}, "blts": {"draft", "verify"}, "bltdv": {"unmask", "draft", "verify"}}


@pytest.fixture(scope="module")
def ort_gen(tiny_bundle):
    import fastblt.runtime as rt

    with rt.load(tiny_bundle, backend="ort") as gen:
        yield gen


@pytest.mark.parametrize("mode", list(MODE_EVENTS))
def test_each_mode_streams_the_documented_events(ort_gen, mode):
    kinds = [e["type"] for e in ort_gen.stream("def f(x):", mode=mode, max_new_bytes=12, block_size=4)]
    assert kinds[-1] == "done" and kinds.count("done") == 1 and "text" in kinds
    assert set(kinds) - {"text", "done"} == MODE_EVENTS[mode]


def test_the_readme_lists_the_events_the_modes_yield():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    api = readme[readme.index("## Python API"):readme.index("## Decoding modes")]
    named = set(re.findall(r"`(text|done|draft|verify|unmask|commit)`", api))
    assert named == {"text", "done"} | set().union(*MODE_EVENTS.values()), named


def test_inspect_json_of_a_bundle_is_json_with_config_and_parameter_counts(tiny_bundle):
    runner = CliRunner()
    res = runner.invoke(export_main, ["inspect", str(tiny_bundle), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["kind"] == "bundle" and report["precisions"] == ["fp32"] and report["block_sizes"] == [4, 8]
    assert report["config"]["vocab_size"] == 262 and report["total_params"] == sum(report["params"].values()) > 0
    assert report["bytes"]["fp32"] > 0 and "patcher" in report["graphs"] and "fp32" in report["quality"]
    text = runner.invoke(export_main, ["inspect", str(tiny_bundle)])
    assert text.exit_code == 0 and "params total" in text.output and not text.output.lstrip().startswith("{")


def test_calibration_records_only_the_block_sizes_the_bundle_has(tiny_bundle, tmp_path):
    """A bundle built with fewer --block-sizes than the model was trained for can still be quantized: the
    calibration pass runs the bundle's own block sizes."""
    from fastblt.export.calibration import record
    from fastblt.runtime.backends.ort import OrtBackend

    staged = tmp_path / "staged"
    shutil.copytree(tiny_bundle, staged)
    data = json.loads((staged / "manifest.json").read_text())
    data["block_sizes"] = [4]
    data["graphs"] = {k: v for k, v in data["graphs"].items() if k != "decoder_block_8"}
    (staged / "manifest.json").write_text(json.dumps(data))
    with OrtBackend(staged, "fp32", layout="standard") as backend:
        assert backend.config.block_sizes == (4, 8)  # trained for both, built for one
        rec = record(backend, [b"def f(x):"], new_bytes=8)
        assert "decoder_block_4" in rec.records and "decoder_block_8" not in rec.records
        from fastblt.runtime.generator import Generator
        from fastblt.runtime.manifest import BundleError

        with pytest.raises(BundleError, match=r"no decoder_block for block size 8 \(it has \[4\]\): use one of those "
                                              r"block sizes, or rebuild the bundle with `blt-export build "
                                              r"--block-sizes` listing 8"):
            Generator(backend).generate("def f(x):", mode="bltd", block_size=8, max_new_bytes=8)


def test_engine_without_tensorrt_names_the_install_not_a_flag_it_lacks(tiny_bundle, monkeypatch):
    import fastblt.runtime.trt_device as trt_device

    monkeypatch.setattr(trt_device, "probe", lambda: (None, "the tensorrt Python package is not installed"))
    res = CliRunner().invoke(export_main, ["engine", str(tiny_bundle), "--precision", "fp32"])
    assert res.exit_code == 1, res.output
    assert "--engines" not in res.output
    assert "the tensorrt Python package is not installed" in res.output
    assert "pip install 'fastblt[trt]'" in res.output and "'fastblt[trt-cu12]'" in res.output
