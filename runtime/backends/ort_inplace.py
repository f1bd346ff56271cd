"""In-place cache calls for the fused graph layout (graphs/incremental/fused.py) through ORT IO binding.

Each layer's cache buffer is bound as both the `past_*` input and the `present_*` output, so ONNX Runtime's
GroupQueryAttention writes the new entries straight into the session's KVCache: no visible-window copy on
the way in, no append on the way out. The binding is kept between calls; the cache buffers are rebound
only when the KVCache reallocates (the unbounded global cache grows by doubling).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from fastblt.graphs.spec import GraphSpec
from fastblt.runtime.backends import check_feeds


class InPlaceGraph:
    def __init__(self, session: ort.InferenceSession, spec: GraphSpec) -> None:
        self.session, self.spec = session, spec
        self.caches = [i.name for i in spec.inputs if i.name.startswith("past_") and i.name != "past_length"]
        plain = tuple(i for i in spec.inputs if i.name not in self.caches and i.name != "past_length")
        self.outputs = [o.name for o in spec.outputs if not o.name.startswith("present_")]
        # what the caller feeds: the standard graph's inputs without its cache (checked the same clear way)
        self.host_spec = GraphSpec(spec.name, plain, tuple(o for o in spec.outputs if o.name in self.outputs),
                                   spec.stack)
        self.binding = session.io_binding()
        self._bound: tuple[np.ndarray, np.ndarray] | None = None
        self._values: list[ort.OrtValue] = []

    def run(self, feeds: dict[str, np.ndarray], cache, keep: bool, check: bool) -> dict[str, np.ndarray]:
        if check:
            check_feeds(self.host_spec, feeds)
        t = feeds[self.host_spec.inputs[0].name].shape[1]  # new rows: bytes, or patches for `global`
        cache.reserve(t)
        if self._bound is None or self._bound[0] is not cache.k or self._bound[1] is not cache.v:
            self._bind(cache)
        binding = self.binding
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        binding.bind_cpu_input("past_length", np.array([cache.length], dtype=np.int32))
        for name in self.outputs:  # rebound each call: ORT allocates fresh outputs, nothing aliases a result
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()  # in binding order: these outputs first (see _bind), then the caches
        out = {name: values[i].numpy() for i, name in enumerate(self.outputs)}
        if keep:
            cache.advance(t)
        return out

    def _bind(self, cache) -> None:
        """Bind layer i's key/value buffers (contiguous [1, h, C, d] views of the cache) in and out."""
        self._values = []
        self.binding.clear_binding_outputs()
        for name in self.outputs:
            self.binding.bind_output(name)
        for name in self.caches:
            _, part, layer = name.split("_")
            buf = (cache.k if part == "key" else cache.v)[int(layer)]
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            self.binding.bind_ortvalue_input(name, value)
            self.binding.bind_ortvalue_output(f"present_{part}_{layer}", value)
            self._values.append(value)
        self._bound = (cache.k, cache.v)
