"""`blt-export`, in-process: init, inspect, import-hf, and a clear error before any file is written."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fastblt.export.cli import main as export_main


def test_init_and_inspect(tmp_path):
    runner = CliRunner()
    ckpt = tmp_path / "m"
    assert runner.invoke(export_main, ["init", "--out", str(ckpt)]).exit_code == 0
    out = runner.invoke(export_main, ["inspect", str(ckpt), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["params"]["decoder"] > 0


def test_import_hf(tmp_path, hf_checkpoints):
    res = CliRunner().invoke(export_main, ["import-hf", str(hf_checkpoints["k2-4bpp"]), "--out", str(tmp_path / "n")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "n" / "model.safetensors").is_file()


def test_train_refuses_a_bad_option_before_writing(tmp_path):
    res = CliRunner().invoke(export_main, ["train", "--run-dir", str(tmp_path / "run"), "--preset", "tiny",
                                           "--mask-weight", "0"])
    assert res.exit_code == 1 and "mask_weight=0.0 must be > 0" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()
