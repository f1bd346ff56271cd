"""BuildLog: library output of every kind lands in the log file; the user sees stage lines and each warning once."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from fastblt.export.progress import BuildLog


def test_library_output_goes_to_the_log_and_warnings_show_once(tmp_path, capfd):
    said = []
    log = tmp_path / "b" / "build.log"
    with BuildLog(log, said.append) as blog:
        print("exporter notice")
        os.write(1, b"native stdout\n")
        os.write(2, b"native stderr\n")
        logging.getLogger("onnxruntime.quantization").warning(
            "Please consider to run pre-processing before quantization.")
        for _ in range(3):
            warnings.warn("weights changed shape", UserWarning, stacklevel=1)  # from the project's tree: shown
        for _ in range(2):  # a library's notice about its own internals: kept in the log, only counted
            warnings.warn_explicit("axis name batch will not be used", UserWarning,
                                   "/x/site-packages/torch/onnx/_onnx_program.py", 486)
        with blog.stage("export: ONNX graphs", 2) as bar:
            bar.update()
            bar.update()
    out, err = capfd.readouterr()
    assert "notice" not in out + err and "native" not in out + err and "pre-processing" not in out + err
    text = log.read_text()
    for line in ("exporter notice", "native stdout", "native stderr", "pre-processing", "weights changed shape",
                 "axis name batch", "== export: ONNX graphs (2 graphs)"):
        assert line in text
    assert said == ["export: ONNX graphs (2 graphs)", "warning (×3): UserWarning: weights changed shape",
                    f"2 library notices (deprecations, exporter and quantizer advice) in {log}"]


def test_streams_are_restored_after_an_error(tmp_path, capfd):
    with pytest.raises(RuntimeError), BuildLog(tmp_path / "build.log", lambda m: None):
        raise RuntimeError("export failed")
    print("visible again")
    os.write(2, b"stderr again\n")
    out, err = capfd.readouterr()
    assert "visible again" in out and "stderr again" in err


def test_bars_draw_on_the_terminal_not_in_the_log(tmp_path, capfd):
    pytest.importorskip("tqdm")
    with BuildLog(tmp_path / "build.log", lambda m: None, bars=True) as blog, blog.stage("validation", 3) as bar:
        for _ in range(3):
            bar.update()
    _, err = capfd.readouterr()
    assert "validation" in err and "3/3" in err
    assert "3/3" not in (tmp_path / "build.log").read_text()
