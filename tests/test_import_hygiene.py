"""`import fastblt.runtime` pulls in no torch, tensorrt or gradio; no module imports a bare folder name."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("torch", "tensorrt", "gradio", "onnx", "onnxruntime", "transformers")


def test_runtime_imports_no_heavy_deps(tmp_path):
    code = (
        "import sys, fastblt.runtime, fastblt.runtime.session, fastblt.runtime.host, fastblt.runtime.cli, "
        "fastblt.graphs.config, fastblt.graphs.spec\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_bare_folder_imports():
    pattern = re.compile(r"^\s*(from|import)\s+(graphs|runtime|export|demo)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for folder in ("graphs", "runtime", "export", "demo", "tests",
                                                          "benchmarks")
                 for p in (ROOT / folder).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
