"""Fixtures for the server tests: a tiny diffusion-trained checkpoint, free loopback ports, running servers."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny BLT with block sizes 4 and 8 whose EOS logit is 0 (random bytes win), so generations run
    to max_tokens and a long one really is long."""
    import torch

    from fastblt.graphs.checkpoint import save_model
    from fastblt.graphs.config import tiny_config
    from fastblt.graphs.model import BltModel
    from fastblt.runtime import host

    torch.manual_seed(0)
    model = BltModel(tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8),
                                 patch_threshold=3.5)).eval()
    with torch.no_grad():
        model.patcher.lm_head.weight.mul_(10.0)
        model.lm_head.weight[host.EOS] = 0.0
    return save_model(model, tmp_path_factory.mktemp("serve") / "tiny-blt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 120.0, proc=None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become healthy in {timeout} s")


class ThreadServer:
    """create_app under uvicorn in a background thread of the test process, on a free loopback port."""

    def __init__(self, generator, **config) -> None:
        import uvicorn

        from fastblt.runtime.serve.app import ServeConfig, create_app

        self.app = create_app(generator, ServeConfig(**config))
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_healthy(self.url, 30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def serve_tools():
    """The helpers above, for test modules (importlib mode keeps conftest out of their imports)."""
    return SimpleNamespace(free_port=free_port, wait_healthy=wait_healthy, ThreadServer=ThreadServer)
