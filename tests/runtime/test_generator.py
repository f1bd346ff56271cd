"""Generator and backends as context managers: leaving `with` closes them, and a closed one refuses to run."""

from __future__ import annotations

import pytest

from fastblt.runtime.backends import BackendBase
from fastblt.runtime.backends.torch_ref import TorchBackend
from fastblt.runtime.generator import Generator


def test_leaving_with_closes_the_ort_backend_and_its_in_place_graphs(tiny_bundle):
    pytest.importorskip("onnxruntime")
    from fastblt.runtime.backends.ort import OrtBackend

    with Generator(OrtBackend(tiny_bundle, "fp32")) as gen:
        assert gen.backend.in_place_graphs == {"patcher", "encoder", "global", "decoder_step", "draft_step"}
        first = gen.generate("def f(x):", max_new_bytes=8)
        assert len(first.bytes) > 0
    assert gen.backend.sessions == {} and gen.backend.in_place_graphs == frozenset()
    with pytest.raises(RuntimeError, match="closed"):
        gen.generate("def f(x):", max_new_bytes=8)


def test_an_error_inside_with_still_closes(tiny_bltd):
    backend = TorchBackend(tiny_bltd)
    with pytest.raises(KeyError), Generator(backend):
        raise KeyError("boom")
    with pytest.raises(RuntimeError, match="this torch backend is closed"):
        Generator(backend).generate("x", max_new_bytes=2)


def test_a_backend_is_its_own_context_manager_and_runs_nothing_in_place_unless_it_says_so(tiny_bltd):
    with TorchBackend(tiny_bltd) as backend:
        assert isinstance(backend, BackendBase) and backend.in_place_graphs == frozenset()
        with pytest.raises(ValueError, match="runs no graph in place"):
            backend.run_in_place("patcher", {}, None)
        assert len(Generator(backend).generate("x", max_new_bytes=3).bytes) > 0
    assert backend.graphs == {}
