"""One loaded Generator serving several threads at once (the demo and the server share one model): every
request returns exactly what it returns alone, in every mode, on the fused ORT layout and the torch backend."""

from __future__ import annotations

import threading

import pytest

from fastblt.runtime.generator import Generator

pytest.importorskip("onnxruntime")

PROMPTS = ["def f(x):", "class Point:\n    def __init__(self", "import os\n", "Grüße, 東京!", "x = [", "# sum",
           "while True:", "return a + b"]
MODES = ("ar", "blts", "bltd", "bltdv")
REQUESTS = [(p, MODES[i % 4], dict(max_new_bytes=24 + 4 * i, draft_k=2 + i % 3, block_size=(4, 8)[i // 4 % 2]))
            for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def model(tiny_bltd):
    return tiny_bltd


@pytest.fixture(scope="module")
def fused(tiny_bundle):
    from fastblt.runtime.backends.ort import OrtBackend

    backend = OrtBackend(tiny_bundle, "fp32")
    assert backend.layout == "fused" and backend.in_place_graphs  # the path whose bindings were shared
    return Generator(backend)


def _threaded(gen: Generator, threads: int = 4) -> list[bytes]:
    """Run REQUESTS on `threads` threads at once (each taking the next request), released together."""
    results: list[bytes | BaseException | None] = [None] * len(REQUESTS)
    start, lock, todo = threading.Barrier(threads), threading.Lock(), iter(range(len(REQUESTS)))

    def work() -> None:
        start.wait()
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            prompt, mode, kw = REQUESTS[i]
            try:
                results[i] = gen.generate(prompt, mode=mode, **kw).bytes
            except BaseException as e:  # reported below with the request that raised it
                results[i] = e

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    errors = [(REQUESTS[i][:2], r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert not errors, errors
    return results


@pytest.mark.parametrize("backend", ["ort-fused", "torch"])
def test_one_generator_from_four_threads_equals_one_at_a_time(backend, fused, model):
    from fastblt.runtime.backends.torch_ref import TorchBackend

    gen = fused if backend == "ort-fused" else Generator(TorchBackend(model))
    alone = [gen.generate(p, mode=mode, **kw).bytes for p, mode, kw in REQUESTS]
    assert len(set(alone)) == len(REQUESTS)  # distinct outputs: a mix-up between requests would show
    assert _threaded(gen) == alone
    assert gen.generate(*REQUESTS[0][:1], mode="ar", **REQUESTS[0][2]).bytes == alone[0]  # still serving alone


def test_sessions_release_their_bindings(fused):
    """Each session's bindings live with its caches: none pile up across requests."""
    import gc

    for p, mode, kw in REQUESTS[:4]:
        fused.generate(p, mode=mode, **kw)
    gc.collect()
    assert all(len(g._bindings) == 0 for g in fused.backend._in_place.values())
