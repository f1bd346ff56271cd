"""One sequence's state and the primitives every decoding mode is built from: commit and rollback.

Per committed chunk of bytes the session makes a constant number of graph calls: patcher and encoder over
the chunk, one global call for all patches the chunk closes, one decoder call. Patch boundaries, hash ids
and the decoder's patch index are host bookkeeping (runtime/host.py). Caches stay at the local window plus
a rollback slack.
"""

from __future__ import annotations

import bisect

import numpy as np
from fastblt.runtime import host
from fastblt.runtime.cache import KVCache

ROLLBACK_SLACK = 64


class SequenceTooLongError(ValueError):
    """The sequence would exceed the positions the model was configured for."""


class Session:
    def __init__(self, backend, slack: int = ROLLBACK_SLACK) -> None:
        self.backend = backend
        cfg = self.config = backend.config
        self.slack = slack
        self.caches = {
            graph: KVCache(sub.n_layers, sub.kv_heads, sub.head_dim, sub.window, slack)
            for graph, sub in (("patcher", cfg.patcher), ("encoder", cfg.encoder),
                               ("global", cfg.global_transformer), ("decoder", cfg.decoder))
        }
        self.ids: list[int] = []
        self.entropies: list[float] = []
        self.patch_starts: list[int] = []  # starts of every patch, incl. the open one (it may hold no byte yet)
        self.memory = np.zeros((16, cfg.cross_attn_k, cfg.encoder.dim), dtype=np.float32)  # per closed patch
        self.states = np.zeros((64, cfg.encoder.dim), dtype=np.float32)  # encoder states from states_start on
        self.states_start = 0
        self.row_logits = np.zeros((64, cfg.vocab_size), dtype=np.float32)  # decoder logits, recent rows
        self.logits_start = 0
        self.calls: dict[str, int] = {}
        self._gmax = max(cfg.hash_sizes)

    # ---- queries -------------------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def n_closed(self) -> int:
        """Patches whose latent is computed: every patch but the open (last) one."""
        return max(len(self.patch_starts) - 1, 0)

    def logits(self, position: int | None = None) -> np.ndarray:
        """Decoder logits of row `position` (default: the last), i.e. the distribution of the next byte."""
        position = self.length - 1 if position is None else position
        if not (self.logits_start <= position < self.length):
            raise IndexError(f"logits of row {position} are not kept (rows {self.logits_start}..{self.length - 1})")
        return self.row_logits[position - self.logits_start]

    # ---- primitives ------------------------------------------------------------------------------------------
    def commit(self, new_ids) -> np.ndarray:
        """Append ids (BOS first on an empty session); returns decoder logits [t, V] of the new rows."""
        new = np.asarray(new_ids, dtype=np.int64).reshape(-1)
        t, n0, cfg = new.size, self.length, self.config
        if t == 0:
            raise ValueError("commit needs at least one id")
        if n0 == 0 and new[0] != host.BOS:
            raise ValueError(f"a sequence must start with BOS={host.BOS}; got id {int(new[0])}")
        if int(new.min()) < 0 or int(new.max()) >= cfg.vocab_size:
            raise ValueError(f"ids must lie in [0, {cfg.vocab_size})")
        limit = min(cfg.encoder.max_positions, cfg.decoder.max_positions, cfg.patcher.max_positions)
        if n0 + t > limit:
            raise SequenceTooLongError(f"sequence of {n0 + t} ids exceeds the model's {limit} byte positions; "
                                       "shorten the prompt or max_new_bytes")
        pos = np.arange(n0, n0 + t, dtype=np.int64)[None]
        ent = self._run_stack("patcher", {"ids": new[None], "positions": pos})["entropies"][0]
        hashes = host.hash_ids(new, cfg.hash_sizes, cfg.hash_vocab, cfg.hash_functions,
                               history=self.ids[-(self._gmax - 1):] if self._gmax > 1 else ())
        states = self._run_stack("encoder", {"ids": new[None], "hash_ids": hashes[None], "positions": pos})["states"][0]
        self.ids.extend(int(i) for i in new)
        self.entropies.extend(float(h) for h in ent)
        self._store_states(n0, states)

        closing: list[tuple[int, int]] = []
        rows = np.empty(t, dtype=np.int64)
        for j in range(n0, n0 + t):
            if j == 0:
                self.patch_starts.append(0)
            start = self.patch_starts[-1]
            if host.next_is_start(self.entropies[j], j + 1, start, cfg.patch_threshold, cfg.max_patch_length):
                closing.append((start, j + 1))
                self.patch_starts.append(j + 1)
            rows[j - n0] = self.n_closed - 1  # d(j): the last patch complete at j
        if closing:
            self._close_patches(closing)
        feeds = {"states": states[None], "positions": pos, "memory": self.memory[rows][None]}
        logits = self._run_stack("decoder", feeds, graph="decoder_step")["logits"][0]
        self._store_logits(n0, logits)
        self._trim()
        return logits

    def rollback(self, length: int) -> None:
        """Forget everything from position `length` on; every cache then equals a prefill of ids[:length]."""
        if not (1 <= length <= self.length):
            raise ValueError(f"rollback length must be in [1, {self.length}], got {length}")
        if length - 1 < self.logits_start or length < self.states_start:
            raise ValueError(f"cannot roll back {self.length - length} bytes: at most {self.slack} are kept")
        for name in ("patcher", "encoder", "decoder"):
            self.caches[name].truncate(length)
        del self.ids[length:], self.entropies[length:]
        while self.patch_starts and self.patch_starts[-1] > length:
            self.patch_starts.pop()
        self.caches["global"].truncate(self.n_closed)

    def scratch_states(self, block_ids) -> np.ndarray:
        """Encoder states [B, D] of ids placed right after the sequence, without touching any cache
        (the encoder's scratch mode: draft or diffusion blocks, MASK being an ordinary id)."""
        cfg = self.config
        block = np.asarray(block_ids, dtype=np.int64).reshape(-1)
        n = self.length
        pos = np.arange(n, n + block.size, dtype=np.int64)[None]
        hashes = host.hash_ids(block, cfg.hash_sizes, cfg.hash_vocab, cfg.hash_functions,
                               history=self.ids[-(self._gmax - 1):] if self._gmax > 1 else ())
        past_k, past_v = self.caches["encoder"].visible()
        out = self.backend.run("encoder", {"ids": block[None], "hash_ids": hashes[None], "positions": pos,
                                           "past_key": past_k, "past_value": past_v})
        self.calls["encoder"] = self.calls.get("encoder", 0) + 1
        return out["states"][0]

    def block_logits(self, states: np.ndarray, memory: np.ndarray, bidirectional: bool) -> dict:
        """decoder_block over rows placed right after the sequence: the committed prefix is read-only and
        visible (window permitting); rows see each other bidirectionally (diffusion) or causally (verify).
        `memory` is [B, k, D] (per-row latent slots). Returns logits [B, V] and the block's K/V."""
        cfg = self.config
        bsz = states.shape[0]
        n = self.length
        past_k, past_v = self.caches["decoder"].visible()
        t = past_k.shape[3]
        rows = np.arange(n, n + bsz)[:, None]
        keys = np.concatenate([np.arange(n - t, n), np.arange(n, n + bsz)])[None]
        ok = keys < n
        if cfg.decoder.window is not None:
            ok = ok & (rows - keys < cfg.decoder.window)
        inner = np.ones((bsz, bsz), dtype=bool) if bidirectional else np.tri(bsz, dtype=bool)
        ok[:, t:] = inner
        bias = np.where(ok, 0.0, np.finfo(np.float32).min).astype(np.float32)[None]
        out = self.backend.run("decoder_block", {
            "states": states[None].astype(np.float32), "positions": np.arange(n, n + bsz, dtype=np.int64)[None],
            "memory": memory[None].astype(np.float32), "attn_bias": bias, "past_key": past_k,
            "past_value": past_v})
        self.calls["decoder_block"] = self.calls.get("decoder_block", 0) + 1
        return {"logits": out["logits"][0], "key": out["block_key"], "value": out["block_value"]}

    # ---- internals -------------------------------------------------------------------------------------------
    def _run_stack(self, stack: str, feeds: dict, graph: str | None = None) -> dict:
        graph = graph or stack
        cache = self.caches[stack]
        feeds["past_key"], feeds["past_value"] = cache.visible()
        out = self.backend.run(graph, feeds)
        self.calls[graph] = self.calls.get(graph, 0) + 1
        cache.append(out["new_key"], out["new_value"])
        return out

    def _close_patches(self, closing: list[tuple[int, int]]) -> None:
        cfg = self.config
        width = max(end - start for start, end in closing)
        if self.n_closed > cfg.global_transformer.max_positions:
            raise SequenceTooLongError(f"{self.n_closed} patches exceed the global transformer's "
                                       f"{cfg.global_transformer.max_positions} positions")
        p = len(closing)
        patch_states = np.zeros((1, p, width, cfg.encoder.dim), dtype=np.float32)
        mask = np.zeros((1, p, width), dtype=bool)
        for i, (start, end) in enumerate(closing):
            patch_states[0, i, : end - start] = self.states[start - self.states_start: end - self.states_start]
            mask[0, i, : end - start] = True
        first = self.n_closed - p
        feeds = {"patch_states": patch_states, "patch_mask": mask,
                 "patch_positions": np.arange(first, first + p, dtype=np.int64)[None]}
        memory = self._run_stack("global", feeds)["memory"][0]
        self.memory = _put_rows(self.memory, first, memory)

    def _store_states(self, n0: int, states: np.ndarray) -> None:
        self.states = _put_rows(self.states, n0 - self.states_start, states)

    def _store_logits(self, n0: int, logits: np.ndarray) -> None:
        self.row_logits = _put_rows(self.row_logits, n0 - self.logits_start, logits)

    def _trim(self) -> None:
        """Keep what a rollback of up to `slack` bytes needs: encoder states from the start of the patch that
        holds position length-slack (it may become the open patch again) and the last `slack` logits rows."""
        cut = max(self.length - self.slack, 0)
        keep_from = self.patch_starts[bisect.bisect_right(self.patch_starts, cut) - 1]
        drop = keep_from - self.states_start
        if drop > 4 * self.slack:
            self.states = self.states[drop:].copy()
            self.states_start += drop
        drop = self.length - self.slack - self.logits_start
        if drop > 4 * self.slack:
            self.row_logits = self.row_logits[drop:].copy()
            self.logits_start += drop


def _put_rows(buf: np.ndarray, at: int, rows: np.ndarray) -> np.ndarray:
    need = at + rows.shape[0]
    if need > buf.shape[0]:
        grown = np.zeros((max(need, 2 * buf.shape[0]), *buf.shape[1:]), dtype=buf.dtype)
        grown[: buf.shape[0]] = buf
        buf = grown
    buf[at:need] = rows
    return buf
