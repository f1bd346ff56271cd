"""`blt-run`, in-process: generate as JSON, and one clear error per bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fastblt.export.cli import main as export_main
from fastblt.runtime.cli import main as run_main


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "m"
    assert CliRunner().invoke(export_main, ["init", "--out", str(path)]).exit_code == 0
    return path


def test_generate_json(ckpt):
    res = CliRunner().invoke(run_main, ["generate", "--checkpoint", str(ckpt), "--max-new-bytes", "12", "--json",
                                        "héllo"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["mode"] == "ar" and data["prompt_bytes"] == len("héllo".encode())
    assert len(bytes.fromhex(data["bytes_hex"])) <= 12 and data["counters"]["graph_calls"]["decoder_step"] >= 1


def test_clear_errors(tmp_path, ckpt):
    runner = CliRunner()
    res = runner.invoke(run_main, ["generate", "--checkpoint", str(tmp_path / "none"), "x"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(run_main, ["generate", "--checkpoint", str(tmp_path / "empty"), "x"])
    assert res.exit_code == 1 and "missing config.json" in res.output and "Traceback" not in res.output
    res = runner.invoke(run_main, ["generate", "--mode", "beam", "x"])
    assert res.exit_code == 2 and "Invalid value for '--mode': 'beam'" in res.output
    res = runner.invoke(run_main, ["generate", "--checkpoint", str(ckpt), "--max-new-bytes", "0", "x"])
    assert res.exit_code == 1 and "max_new_bytes=0 must be an integer in [1," in res.output
    res = runner.invoke(run_main, ["generate", "--checkpoint", str(ckpt), "--top-p", "0", "x"])
    assert res.exit_code == 1 and "top_p=0.0 must be in (0, 1]" in res.output
