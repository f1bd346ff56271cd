"""A tiny diffusion-trained BLT whose greedy output is printable text, its fused ORT bundle, and the demo
served from it on a free loopback port (one server for the module's tests).

BLT_DEMO_TEST_BUNDLE=DIR runs the same tests on another bundle (the README's screenshot comes from the
default model's bundle this way)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("onnxruntime")

CAP = 256
PRINTABLE = [10] + list(range(32, 127))  # newline and printable ASCII


@pytest.fixture(scope="session")
def demo_model():
    import torch

    from fastblt.graphs.config import tiny_config
    from fastblt.graphs.model import BltModel

    torch.manual_seed(5)
    m = BltModel(tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8), patch_threshold=3.5,
                             window=32)).eval()
    with torch.no_grad():
        m.patcher.lm_head.weight.mul_(10.0)
        keep = torch.zeros(262, dtype=torch.bool)
        keep[[b + 4 for b in PRINTABLE]] = True
        m.lm_head.weight.mul_(3.0)
        m.lm_head.weight[~keep] = 0.0  # every other byte (and EOS) scores 0: greedy text stays printable
    return m


@pytest.fixture(scope="session")
def demo_bundle(demo_model, tmp_path_factory) -> Path:
    if os.environ.get("BLT_DEMO_TEST_BUNDLE"):
        return Path(os.environ["BLT_DEMO_TEST_BUNDLE"])
    from fastblt.export.bundle import build_bundle
    from fastblt.graphs.data import windows

    text = b"def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n" * 2
    return build_bundle(demo_model, tmp_path_factory.mktemp("demo") / "bundle", ("fp32",), engines="no",
                        log=lambda m: None, heldout=list(windows(text, 96))[:2])


@pytest.fixture(scope="session")
def demo_cap() -> int:
    return CAP


@pytest.fixture(scope="session")
def demo_gen(demo_bundle):
    import fastblt.runtime as rt

    gen = rt.load(demo_bundle, backend="ort")
    assert gen.backend.layout == "fused"  # the layout whose shared bindings broke concurrent requests
    return gen


@pytest.fixture(scope="session")
def demo_url(demo_gen, demo_bundle):
    from fastblt.demo.app import build, describe, launch

    app = build(demo_gen, cap=CAP, concurrency=4, about=describe(demo_gen, demo_bundle.name, "ort"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(app, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="session")
def blt_run(demo_bundle):
    """What `blt-run generate` prints after the prompt (greedy, its default settings), as a function."""

    def run(prompt: str, mode: str, max_new_bytes: int) -> str:
        out = subprocess.run([sys.executable, "-m", "fastblt.runtime.cli", "generate", "--bundle", str(demo_bundle),
                              "--mode", mode, "--max-new-bytes", str(max_new_bytes), prompt],
                             capture_output=True, check=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
        text = out.stdout.decode("utf-8")
        assert text.startswith(prompt) and text.endswith("\n"), text
        return text[len(prompt):-1]

    return run
