"""In-place cache calls for the fused graph layout (graphs/incremental/fused.py) through ORT IO binding.

Each layer's cache buffer is bound as both the `past_*` input and the `present_*` output, so ONNX Runtime's
GroupQueryAttention writes the new entries straight into the session's KVCache: no visible-window copy on
the way in, no append on the way out. The binding is kept between calls; the cache buffers are rebound
only when the KVCache reallocates (the unbounded global cache grows by doubling).

One-row calls (every decode step of patcher, encoder and decoder_step) take a second binding whose inputs and
outputs are fixed numpy buffers bound once: a call copies its few values in and its result out, instead of
binding every tensor anew: at one row, binding costs a noticeable share of the call (docs/architecture.md).

Bindings and bound buffers belong to the KVCache they serve (one per session and graph, held in a weak-keyed
map, made on the session's first call): one loaded model serves concurrent sessions, since ORT's Run is
thread-safe but an IO binding, and a buffer bound into it, is one caller's at a time. Keyed by cache rather
than by thread, a session keeps its bindings when it moves between threads (streaming servers) and two
sessions interleaved on one thread never rebind each other's caches; they go when the session does.
"""

from __future__ import annotations

import weakref

import numpy as np
import onnxruntime as ort

from fastblt.graphs.spec import SECOND_CACHE, GraphSpec
from fastblt.runtime.backends import check_feeds


class InPlaceGraph:
    def __init__(self, session: ort.InferenceSession, spec: GraphSpec) -> None:
        self.session, self.spec = session, spec
        # one group per cache the graph updates: ("", names) for its own stack's; draft_step adds the decoder's
        self.groups = [(prefix, [i.name for i in spec.inputs if i.name.startswith(f"{prefix}past_")
                                 and i.name != f"{prefix}past_length"])
                       for prefix in ("", SECOND_CACHE) if f"{prefix}past_length" in spec.input_names]
        bound = {n for _, names in self.groups for n in names} | {f"{p}past_length" for p, _ in self.groups}
        plain = tuple(i for i in spec.inputs if i.name not in bound)
        self.outputs = [o.name for o in spec.outputs if "present_" not in o.name]
        # what the caller feeds: the standard graph's inputs without its cache (checked the same clear way)
        self.host_spec = GraphSpec(spec.name, plain, tuple(o for o in spec.outputs if o.name in self.outputs),
                                   spec.stack)
        self.row = _one_row_shapes(self.host_spec)  # None: an axis besides t is dynamic, no one-row path
        self._bindings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # KVCache -> _Bindings

    def run(self, feeds: dict[str, np.ndarray], cache, keep: bool, check: bool) -> dict[str, np.ndarray]:
        """`cache`: the KVCache the graph updates, or a tuple of them, one per cache group (draft_step:
        encoder, decoder)."""
        caches = cache if isinstance(cache, tuple) else (cache,)
        if len(caches) != len(self.groups):
            raise ValueError(f"graph {self.spec.name!r} updates {len(self.groups)} caches; got {len(caches)}")
        if check:
            check_feeds(self.host_spec, feeds)
        t = feeds[self.host_spec.inputs[0].name].shape[1]  # new rows: bytes, or patches for `global`
        for c in caches:
            c.reserve(t)
        state = self._bindings.get(caches[0])
        if state is None:
            state = self._bindings[caches[0]] = _Bindings(self.session)
        if t == 1 and self.row is not None:
            if state.row is None:
                state.row = _OneRow(self.session, self.host_spec, self.groups, self.row)
            out = state.row.run(feeds, caches)
        else:
            if not _same(state.bound, caches):
                self._bind(state, caches)
            binding = state.binding
            for name, arr in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(arr))
            for (prefix, _), c in zip(self.groups, caches, strict=True):
                binding.bind_cpu_input(f"{prefix}past_length", np.array([c.length], dtype=np.int32))
            for name in self.outputs:  # rebound each call: ORT allocates fresh outputs, nothing aliases a result
                binding.bind_output(name)
            self.session.run_with_iobinding(binding)
            values = binding.get_outputs()  # in binding order: these outputs first (see _bind), then the caches
            out = {name: values[i].numpy() for i, name in enumerate(self.outputs)}
        if keep:
            for c in caches:
                c.advance(t)
        return out

    def _bind(self, state: _Bindings, caches: tuple) -> None:
        """Bind the outputs first, then the cache buffers: get_outputs lists them in that order."""
        state.binding.clear_binding_outputs()
        for name in self.outputs:
            state.binding.bind_output(name)
        state.values = [v for (prefix, names), c in zip(self.groups, caches, strict=True)
                        for v in _bind_caches(state.binding, prefix, names, c)]
        state.bound = _buffers(caches)


class _Bindings:
    """One cache's bindings: the general one (inputs bound per call) and, once used, the one-row path."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.binding = session.io_binding()
        self.bound: list[np.ndarray] | None = None  # the bound cache buffers (see _same)
        self.values: list[ort.OrtValue] = []  # the bound cache OrtValues, kept alive with the binding
        self.row: _OneRow | None = None


def _one_row_shapes(spec: GraphSpec) -> dict[str, tuple[int, ...]] | None:
    """Concrete shapes of every host input and output at t = 1, or None if another axis is dynamic."""
    shapes = {}
    for ts in (*spec.inputs, *spec.outputs):
        shape = tuple(1 if d == "t" else d for d in ts.shape)
        if not all(isinstance(d, int) for d in shape):
            return None
        shapes[ts.name] = shape
    return shapes


class _OneRow:
    """The t = 1 call on fixed, bound-once input and output buffers (plus the cache buffers, rebound when
    the KVCache reallocates). Results are returned as copies, so nothing aliases the next call's output."""

    def __init__(self, session: ort.InferenceSession, spec: GraphSpec, groups: list[tuple[str, list[str]]],
                 shapes: dict[str, tuple[int, ...]]) -> None:
        self.session, self.groups = session, groups
        self.binding = session.io_binding()
        self.inputs = {ts.name: np.zeros(shapes[ts.name], ts.dtype) for ts in spec.inputs}
        self.outputs = {ts.name: np.zeros(shapes[ts.name], ts.dtype) for ts in spec.outputs}
        self.past_lengths = [np.zeros(1, dtype=np.int32) for _ in groups]
        self._values = []  # OrtValues over the buffers, kept alive with the binding
        lengths = [(f"{prefix}past_length", buf) for (prefix, _), buf in zip(groups, self.past_lengths, strict=True)]
        for name, buf in (*self.inputs.items(), *lengths):
            self._values.append(ort.OrtValue.ortvalue_from_numpy(buf))
            self.binding.bind_ortvalue_input(name, self._values[-1])
        for name, buf in self.outputs.items():
            self._values.append(ort.OrtValue.ortvalue_from_numpy(buf))
            self.binding.bind_ortvalue_output(name, self._values[-1])
        self._bound: list[np.ndarray] | None = None
        self._cache_values: list[ort.OrtValue] = []

    def run(self, feeds: dict[str, np.ndarray], caches: tuple) -> dict[str, np.ndarray]:
        if not _same(self._bound, caches):
            self._cache_values = [v for (prefix, names), c in zip(self.groups, caches, strict=True)
                                  for v in _bind_caches(self.binding, prefix, names, c)]
            self._bound = _buffers(caches)
        for name, buf in self.inputs.items():
            buf[...] = feeds[name]
        for buf, c in zip(self.past_lengths, caches, strict=True):
            buf[0] = c.length
        self.session.run_with_iobinding(self.binding)
        return {name: buf.copy() for name, buf in self.outputs.items()}


def _buffers(caches: tuple) -> list[np.ndarray]:
    return [b for c in caches for b in (c.k, c.v)]


def _same(bound: list[np.ndarray] | None, caches: tuple) -> bool:
    """Whether `bound` are the caches' current key/value buffers: a KVCache that reallocated is bound again
    (checked on every call, so without building a list)."""
    if bound is None:
        return False
    for i, c in enumerate(caches):
        if bound[2 * i] is not c.k or bound[2 * i + 1] is not c.v:
            return False
    return True


def _bind_caches(binding, prefix: str, names: list[str], cache) -> list[ort.OrtValue]:
    """Bind layer i's key/value buffers (contiguous [1, h, C, d] views of the cache) as both the past input
    (`{prefix}past_key_i`) and the present output; returns the OrtValues, which must live as long as the
    binding uses them."""
    values = []
    for name in names:
        _, part, layer = name[len(prefix):].split("_")
        value = ort.OrtValue.ortvalue_from_numpy((cache.k if part == "key" else cache.v)[int(layer)])
        binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(f"{prefix}present_{part}_{layer}", value)
        values.append(value)
    return values
