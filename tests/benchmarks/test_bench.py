"""blt-bench: every subcommand runs on a tiny bundle with tiny settings and writes well-formed JSON, Markdown and
PNG; `report` re-renders a saved run identically; bad input gets one clear error. Numbers are never asserted:
they are measurements, not behaviour (except invariants such as BLT-S's greedy identity with AR)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fastblt.benchmarks import quality
from fastblt.benchmarks.cli import main
from fastblt.benchmarks.common import BenchError, heldout_prompts, parse_setting
from fastblt.graphs.training.data import corpus_documents

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


def _run(args, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert (result.exit_code == 0) == ok, result.output
    return result


def _outputs(out, name: str, figures: list[str]) -> dict:
    data = json.loads((out / f"{name}.json").read_text())
    assert data["format"] == "fastblt-bench" and data["machine"]["cores"] and data["machine"]["date"]
    assert "versions" in data["machine"] and "commit" in data["machine"]
    md = (out / f"{name}.md").read_text()
    assert md.startswith("# fastblt benchmarks") and "**Machine:**" in md and "|---|" in md
    for fig in figures:
        assert (out / name / fig).read_bytes().startswith(PNG), fig
        assert f"({name}/{fig})" in md
    assert not list(out.glob(".*")), "a temp file was left behind"
    return data


def test_graphs(bundle, tmp_path):
    _run(["graphs", "--bundle", bundle, "--contexts", "16,40", "--calls", "8", "--out", tmp_path, "--quiet"])
    section = _outputs(tmp_path, "graphs", ["graph_ms_vs_bound.png"])["sections"]["graphs"]
    # the fused layout is timed where the bundle has it, as a second target
    assert [(t["precision"], t["layout"]) for t in section["targets"]] == [("fp32", "fused"), ("fp32", "standard")]
    labels = {r["graph"] for t in section["targets"] for r in t["rows"]}
    assert {"patcher", "encoder", "decoder_step", "decoder_block B=4", "decoder_block B=8"} <= labels
    for t in section["targets"]:
        for r in t["rows"]:
            assert r["ms"]["n"] >= 1 and r["weight_bytes"] > 0 and r["bound_ms"] > 0


def test_decode_and_report(bundle, tmp_path):
    modes = "ar,blts/k=4,bltd/B=4/alpha=0.7,bltdv/B=8/one_step,bltd/B=16/alpha=0.7"  # B=16 is not bundled: skipped
    _run(["decode", "--bundle", bundle, "--modes", modes, "--contexts", "24,48",
          "--prompts", "2", "--repeats", "1", "--new-bytes", "12", "--out", tmp_path, "--quiet"])
    data = _outputs(tmp_path, "decode", ["bytes_per_s.png", "latency_vs_context.png"])
    (target,) = data["sections"]["decode"]["targets"]
    assert {r["setting"] for r in target["rows"]} == {"ar", "blts/k=4", "bltd/B=4/alpha=0.7", "bltdv/B=8/one_step"}
    assert len(target["runs"]) == 2 * 2 * 4  # contexts × prompts × settings
    for r in target["rows"]:
        assert r["bytes_per_s"]["n"] == 2 and r["n_dec_per_byte"]["median"] > 0
    blts = [r for r in target["rows"] if r["mode"] == "blts"]
    assert all(r["same_as_ar"] == 1.0 for r in blts)  # BLT-S is lossless under greedy decoding
    again = tmp_path / "again" / "report.md"
    _run(["report", tmp_path / "decode.json", "--md", again, "--quiet"])
    rendered = again.read_text()
    assert rendered == (tmp_path / "decode.md").read_text().replace("(decode/", "(report/")
    assert (again.parent / "report" / "bytes_per_s.png").read_bytes().startswith(PNG)
    clash = _run(["report", tmp_path / "decode.json", tmp_path / "decode.json", "--md", again], ok=False).output
    assert "appear in more than one results file" in clash


def test_quality(bundle, tmp_path):
    _run(["quality", "--bundle", bundle, "--modes", "ar,bltd/B=4/alpha=0.7", "--lines", "3", "--bpb-windows", "2",
          "--humaneval", "1", "--humaneval-modes", "ar", "--out", tmp_path, "--quiet"])
    section = _outputs(tmp_path, "quality", ["quality_vs_bandwidth.png"])["sections"]["quality"]
    assert [r["precision"] for r in section["bpb"]] == ["fp32"]
    assert all(r["bits_per_byte"] > 0 for r in section["bpb"])
    assert [r["tasks"] for r in section["line_completion"]["rows"]] == [3, 3]
    he = section["humaneval"]
    if he["available"]:
        (row,) = he["rows"]
        assert row["problems"] == 1 and sum(row["top_outcomes"].values()) == 1
        md = (tmp_path / "quality.md").read_text()
        assert "HumanEval pass@1" in md and ("No problem passes" in md) == (row["passed"] == 0)


def test_paper(bundle, tmp_path):
    _run(["paper", "--bundle", bundle, "--modes", "ar,blts/k=4,bltd/B=4/alpha=0.7,bltdv/B=4/one_step",
          "--prompts", "1", "--new-bytes", "16", "--out", tmp_path, "--quiet"])
    section = _outputs(tmp_path, "paper", [])["sections"]["paper"]
    assert len(section["paper_rows"]) == 223 and len(section["eq8_check"]) == 8
    # the transcribed tables are consistent with Eq. 8 (a transcription error would show here)
    assert max(t["max_abs_error_pct"] for t in section["eq8_check"].values()) < 2.5
    assert set(section["ours"]) == {"ar", "blts/k=4", "bltd/B=4/alpha=0.7", "bltdv/B=4/one_step"}
    assert all(r["spec"] and parse_setting(r["spec"]) for r in section["paper_rows"])
    assert "BLT-S k=4" in (tmp_path / "paper.md").read_text()


def test_anchor(hf_checkpoints, tmp_path):
    pytest.importorskip("transformers")
    _run(["anchor", "--weights", hf_checkpoints["k2-4bpp"], "--context", "40", "--new-bytes", "6", "--repeats", "1",
          "--rounds", "1", "--draft-k", "4", "--precision", "fp32", "--no-fused", "--out", tmp_path, "--quiet"])
    section = _outputs(tmp_path, "anchor", [])["sections"]["anchor"]
    engines = [r["engine"] for r in section["rows"]]
    assert engines[0].startswith("HF transformers") and len(engines) == 1 + 2 * 2  # torch, ORT fp32 × AR, BLT-S
    assert len(section["rounds"]) == 1 and set(section["ratios"]) == {"AR", "BLT-S k=4"}


def test_bad_input(bundle, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not valid JSON" in _run(["report", bad], ok=False).output
    bad.write_text(json.dumps({"format": "something else"}))
    assert "not a blt-bench results file" in _run(["report", bad], ok=False).output
    assert "mode setting" in _run(["decode", "--bundle", bundle, "--modes", "bltd/k=3", "--out", tmp_path],
                                  ok=False).output
    assert "no ['fp8'] graphs" in _run(["decode", "--bundle", bundle, "--precision", "fp8", "--out", tmp_path],
                                       ok=False).output
    assert not (tmp_path / "decode.json").exists()


def test_prompts_are_held_out():
    heldout = {d.read()[:64] for d in corpus_documents(None, "heldout")}
    train = {d.read()[:64] for d in corpus_documents(None, "train")[:200]}
    for p in heldout_prompts(3, 512):
        assert p[:64] in heldout and p[:64] not in train


def test_humaneval_runner_isolated():
    assert quality.run_program("assert 1 + 1 == 2", 10) == (True, "passed")
    ok, why = quality.run_program("raise ValueError('wrong')", 10)
    assert not ok and "ValueError" in why
    assert quality.run_program("while True: pass", 1) == (False, "timeout")
    assert quality.edit_similarity("abc", "abc") == 1.0 and quality.edit_similarity("abc", "xyz") == 0.0
    assert quality.edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    with pytest.raises(BenchError, match="blts takes k=N"):
        parse_setting("blts/B=4")
