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


@pytest.fixture(scope="session")
def demo_model(tiny_bltd):
    return tiny_bltd


@pytest.fixture(scope="session")
def demo_bundle(tiny_bundle) -> Path:
    if os.environ.get("BLT_DEMO_TEST_BUNDLE"):
        return Path(os.environ["BLT_DEMO_TEST_BUNDLE"])
    return tiny_bundle


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
