"""The two console scripts, in-process: happy paths and one clear error per bad input."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fastblt.export.cli import main as export_main
from fastblt.runtime.cli import main as run_main


def test_init_inspect_generate(tmp_path):
    runner = CliRunner()
    ckpt = tmp_path / "m"
    assert runner.invoke(export_main, ["init", "--out", str(ckpt)]).exit_code == 0
    out = runner.invoke(export_main, ["inspect", str(ckpt), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["params"]["decoder"] > 0
    res = runner.invoke(run_main, ["generate", "--checkpoint", str(ckpt), "--max-new-bytes", "12", "--json", "héllo"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["mode"] == "ar" and data["prompt_bytes"] == len("héllo".encode())
    assert len(bytes.fromhex(data["bytes_hex"])) <= 12 and data["counters"]["graph_calls"]["decoder_step"] >= 1


def test_import_hf(tmp_path, hf_checkpoints):
    res = CliRunner().invoke(export_main, ["import-hf", str(hf_checkpoints["k2-4bpp"]), "--out", str(tmp_path / "n")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "n" / "model.safetensors").is_file()


def test_clear_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(run_main, ["generate", "--checkpoint", str(tmp_path), "x"])
    assert res.exit_code == 1 and "missing config.json" in res.output and "Traceback" not in res.output
    res = runner.invoke(run_main, ["generate", "--mode", "beam", "x"])
    assert res.exit_code == 2 and "Invalid value for '--mode': 'beam'" in res.output
    ckpt = tmp_path / "m"
    runner.invoke(export_main, ["init", "--out", str(ckpt)])
    res = runner.invoke(run_main, ["generate", "--checkpoint", str(ckpt), "--max-new-bytes", "0", "x"])
    assert res.exit_code == 1 and "max_new_bytes=0 must be an integer in [1," in res.output
    res = runner.invoke(run_main, ["generate", "--checkpoint", str(ckpt), "--top-p", "0", "x"])
    assert res.exit_code == 1 and "top_p=0.0 must be in (0, 1]" in res.output
    res = runner.invoke(export_main, ["train", "--run-dir", str(tmp_path / "run"), "--preset", "tiny",
                                      "--mask-weight", "0"])
    assert res.exit_code == 1 and "mask_weight=0.0 must be > 0" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()
