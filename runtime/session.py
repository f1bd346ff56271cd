"""One sequence's state and the primitives every decoding mode is built from.

- `commit(ids)`: patcher and encoder over the new bytes, one global call for the patches they close, one
  decoder call; exact (equals the full forward).
- `rollback(n)`: forget positions ≥ n; every cache then equals a fresh prefill of ids[:n].
- `draft_step(id)`: BLT-S drafting: encoder + decoder for one byte past the sequence with stale conditioning
  (the latest closed patch's latent; no patcher, no global), in one call where the backend has the fused
  draft_step graph. `discard_drafts()` drops them; a commit does too but keeps the drafts' exact work on the
  leading ids it shares with them (BLT-S's verify): their encoder states, and their decoder rows up to the
  first patch the commit closes.
- `last_latent()`: the latent a block starting at the end attends to (forcing the open patch closed).
- `block_anchor(B)`: where a diffusion block starts (the open patch's start, or the end with the patch forced
  closed) and the latent its rows read.
- `block_states(ids, start)` / `block_logits(...)`: the encoder in scratch mode and `decoder_block` over a
  block placed at `start`; no cache changes.
- `commit(ids, defer_decoder=True)` (BLT-D): the decoder rows of the new bytes wait for the next
  `block_logits`, which computes them in the same `decoder_block` call as the block (causal rows appended to
  the cache, block rows in scratch), as the paper's BLT-D does; any other use runs them first on their own.

Boundaries, hash ids and the decoder's patch index are host bookkeeping (runtime/host.py). Caches stay at
the local window plus a rollback slack.
"""

from __future__ import annotations

import bisect
import time

import numpy as np

from fastblt.graphs.constants import MAX_CHUNK, ROLLBACK_SLACK, numpy_dtype
from fastblt.runtime import host
from fastblt.runtime.bias import block_bias, fused_bias
from fastblt.runtime.cache import KVCache

BLOCK_STARTS = ("patch", "forced")
TRIM_EVERY = 256  # host rows (encoder states, logits) dropped in batches: one copy per 256 bytes, not per call


class SequenceTooLongError(ValueError):
    """The sequence would exceed the positions the model was configured for."""


class Session:
    def __init__(self, backend, slack: int = ROLLBACK_SLACK) -> None:
        """`slack`: the deepest rollback and the most drafts outstanding at once (bytes). The windowed KV caches
        keep that many entries beyond the window and no more, since ORT's fused attention pays for every
        filled slot: the Generator passes what its mode needs (BLT-S: k, BLT-DV: B)."""
        if not isinstance(slack, int) or slack < 0:
            raise ValueError(f"slack={slack!r} must be an integer ≥ 0")
        self.backend = backend
        self._in_place = backend.in_place_graphs
        self._table = backend.hash_table
        cfg = self.config = backend.config
        self.slack = slack
        dtype = numpy_dtype(backend.cache_dtype)  # half in the fp16/bf16 graphs
        self.caches = {
            graph: KVCache(sub.n_layers, sub.kv_heads, sub.head_dim, sub.window, slack, dtype)
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
        self.draft_ids: list[int] = []
        self.draft_states: list[np.ndarray] = []  # encoder states of the drafts, [D] each
        self.draft_logits: list[np.ndarray] = []  # their decoder rows' logits (stale conditioning), [V] each
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.byte_steps = {"patcher": 0, "encoder": 0}
        self.forced_closures = 0
        self._open_latent: np.ndarray | None = None  # the forced-closed open patch's latent (commit(open_latent))
        self._pending: tuple | None = None  # decoder rows of a commit(defer_decoder=True): (n0, states, memory)
        self._gmax = max(cfg.hash_sizes)
        self._limit = min(cfg.encoder.max_positions, cfg.decoder.max_positions, cfg.patcher.max_positions)

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
        self.flush()
        position = self.length - 1 if position is None else position
        if not (self.logits_start <= position < self.length):
            raise IndexError(f"logits of row {position} are not kept (rows {self.logits_start}..{self.length - 1})")
        return self.row_logits[position - self.logits_start]

    # ---- committing -----------------------------------------------------------------------------------------
    def commit(self, new_ids, open_latent: bool = False, defer_decoder: bool = False) -> np.ndarray | None:
        """Append ids (BOS first on an empty session); returns decoder logits [t, V] of the new rows.

        `open_latent`: also compute, in the same global call as the patches the new ids close, the latent of
        the open patch closed by force (one extra row that never enters the global cache); `last_latent()`
        then returns it without a call of its own (BLT-D's next block). `defer_decoder`: leave the new rows'
        decoder pass to the next `block_logits` call (fused with the block) and return None."""
        new = np.asarray(new_ids, dtype=np.int64).reshape(-1)
        self._check_room(self.length + new.size)
        self.flush()
        self._open_latent = None
        if new.size > MAX_CHUNK:  # graphs (and TensorRT profiles) take at most MAX_CHUNK new bytes per call
            parts = [new[i:i + MAX_CHUNK] for i in range(0, new.size, MAX_CHUNK)]
            outs = [self.commit(part, open_latent and i == len(parts) - 1, defer_decoder and i == len(parts) - 1)
                    for i, part in enumerate(parts)]
            return None if defer_decoder else np.concatenate(outs)
        t, n0, cfg = new.size, self.length, self.config
        if t == 0:
            raise ValueError("commit needs at least one id")
        if n0 == 0 and new[0] != host.BOS:
            raise ValueError(f"a sequence must start with BOS={host.BOS}; got id {int(new[0])}")
        lo, hi = (int(new[0]),) * 2 if t == 1 else (int(new.min()), int(new.max()))  # a decode step: no reductions
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"ids must lie in [0, {cfg.vocab_size})")
        drafted, draft_logits = self._take_drafts(new) if self.draft_ids else ([], [])  # not on AR commits
        reuse = len(drafted)
        pos = np.arange(n0, n0 + t, dtype=np.int64)[None]
        ent = self._run("patcher", "patcher", {"ids": new[None], "positions": pos})["entropies"][0]
        if reuse < t:
            feeds = {"ids": new[None, reuse:], "hash_embeds": self._hash_embeds(new[reuse:], new[:reuse])[None],
                     "positions": pos[:, reuse:]}
            states = self._run("encoder", "encoder", feeds)["states"][0]
            if reuse:
                states = np.concatenate([np.stack(drafted), states])
        else:
            states = np.stack(drafted)
        self.byte_steps["patcher"] += t
        self.byte_steps["encoder"] += t - reuse
        self.ids.extend(new.tolist())
        self.entropies.extend(ent.tolist())
        self.states = _put_rows(self.states, n0 - self.states_start, states)

        closing: list[tuple[int, int]] = []
        rows = [0] * t
        starts, theta, cap = self.patch_starts, cfg.patch_threshold, cfg.max_patch_length
        for j in range(n0, n0 + t):
            if j == 0:
                starts.append(0)
            if host.next_is_start(self.entropies[j], j + 1, starts[-1], theta, cap):
                closing.append((starts[-1], j + 1))
                starts.append(j + 1)
            rows[j - n0] = len(starts) - 2  # d(j): the last patch complete at j (n_closed - 1)
        rows = np.array(rows, dtype=np.int64)
        spans = closing + ([(self.patch_starts[-1], n0 + t)] if open_latent and self.patch_starts[-1] < n0 + t else [])
        if spans:
            first = self.n_closed - len(closing)
            memory = self._run("global", "global", self._patch_feeds(spans, first))["memory"][0]
            if len(spans) > len(closing):  # the forced row: kept aside, never cached
                self.caches["global"].truncate(self.n_closed)
                self._open_latent = memory[-1]
                self.forced_closures += 1
            if closing:
                self.memory = _put_rows(self.memory, first, memory[: len(closing)])
        exact = 0
        if draft_logits:  # keep the K/V of the drafts' exact decoder rows, drop the rest
            if not defer_decoder:
                exact = _exact_draft_rows(rows, self.n_closed - len(closing) - 1, len(draft_logits))
            self.caches["decoder"].truncate(n0 + exact)
        if defer_decoder:
            self._pending = (n0, states, self.memory[rows])
            self._trim(logits=False)
            return None
        if not exact:
            return self._decoder_rows(n0, states, self.memory[rows])
        known = np.stack(draft_logits[:exact])
        self.row_logits = _put_rows(self.row_logits, n0 - self.logits_start, known)
        if exact == t:
            self._trim()
            return known
        return np.concatenate([known, self._decoder_rows(n0 + exact, states[exact:], self.memory[rows[exact:]])])

    def flush(self) -> None:
        """Run the decoder rows a `commit(defer_decoder=True)` left pending, on their own (no-op if none)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._decoder_rows(*pending)

    def _decoder_rows(self, n0: int, states: np.ndarray, memory: np.ndarray) -> np.ndarray:
        """decoder_step over committed rows from n0 on (K/V into the cache); keeps and returns their logits."""
        pos = np.arange(n0, n0 + states.shape[0], dtype=np.int64)[None]
        feeds = {"states": states[None], "positions": pos, "memory": memory[None]}
        logits = self._run("decoder", "decoder_step", feeds)["logits"][0]
        self.row_logits = _put_rows(self.row_logits, n0 - self.logits_start, logits)
        self._trim()
        return logits

    def rollback(self, length: int) -> None:
        """Forget everything from position `length` on; every cache then equals a prefill of ids[:length]."""
        if not (1 <= length <= self.length):
            raise ValueError(f"rollback length must be in [1, {self.length}], got {length}")
        self.flush()
        short = [name for name in ("patcher", "encoder", "decoder") if not self.caches[name].sees_window_at(length)]
        if self.length - length > self.slack or length - 1 < self.logits_start or length < self.states_start or short:
            raise ValueError(f"cannot roll back {self.length - length} bytes: this session keeps {self.slack} "
                             "(Session(backend, slack=...))")
        self.draft_ids.clear()
        self.draft_states.clear()
        self.draft_logits.clear()
        self._open_latent = None
        for name in ("patcher", "encoder", "decoder"):
            self.caches[name].truncate(length)
        del self.ids[length:], self.entropies[length:]
        while self.patch_starts and self.patch_starts[-1] > length:
            self.patch_starts.pop()
        self.caches["global"].truncate(self.n_closed)

    # ---- drafting and blocks --------------------------------------------------------------------------------
    def draft_step(self, byte_id: int) -> np.ndarray:
        """Logits [V] for the byte after `byte_id`, placed after the sequence and earlier drafts, conditioned on
        the latest closed patch's latent (BLT-S's stale conditioning: no patcher, no global call)."""
        self.flush()
        n = self.length + len(self.draft_ids)
        if len(self.draft_ids) >= self.slack:
            raise ValueError(f"this session allows {self.slack} outstanding drafts (Session(backend, slack=...)); "
                             "commit or discard_drafts() first")
        self._check_room(n + 1)
        if not 0 <= byte_id < self.config.vocab_size:
            raise ValueError(f"byte id {byte_id} must lie in [0, {self.config.vocab_size})")
        ids = np.array([[byte_id]], dtype=np.int64)
        pos = np.array([[n]], dtype=np.int64)
        feeds = {"ids": ids, "hash_embeds": self._hash_embeds(ids[0], drafts=True)[None], "positions": pos}
        memory = self.memory[self.n_closed - 1][None, None]
        self.byte_steps["encoder"] += 1
        if "draft_step" in self._in_place:  # encoder and decoder_step in one call (ORT's fused layout)
            out = self._run(("encoder", "decoder"), "draft_step", {**feeds, "memory": memory})
            states, logits = out["states"], out["logits"]
        else:
            states = self._run("encoder", "encoder", feeds)["states"]
            logits = self._run("decoder", "decoder_step", {"states": states, "positions": pos,
                                                           "memory": memory})["logits"]
        self.draft_ids.append(int(byte_id))
        self.draft_states.append(states[0, 0])
        self.draft_logits.append(logits[0, 0])
        return logits[0, 0]

    def discard_drafts(self) -> None:
        """Forget the drafts."""
        self._drop_drafts(keep=0)

    def _drop_drafts(self, keep: int) -> None:
        """Forget the drafts but the encoder and decoder cache entries of the first `keep`, which the commit
        under way then counts as its own (`_take_drafts`)."""
        self.flush()
        self.caches["encoder"].truncate(self.length + keep)
        self.caches["decoder"].truncate(self.length + keep)
        self.draft_ids.clear()
        self.draft_states.clear()
        self.draft_logits.clear()

    def _take_drafts(self, new: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Discard the drafts but keep the work on the leading ids they share with `new` (BLT-S's verify):
        their encoder states and cache entries, exact because the encoder is causal and patch-free, and their
        decoder rows' logits and cache entries, which the commit keeps only for the rows its patching shows
        were exact (`_exact_draft_rows`) and truncates otherwise."""
        m = 0
        while m < min(len(self.draft_ids), new.size) and self.draft_ids[m] == new[m]:
            m += 1
        states, logits = self.draft_states[:m], self.draft_logits[:m]
        self._drop_drafts(keep=m)
        return states, logits

    def last_latent(self) -> np.ndarray:
        """Memory slots [k, D] a block starting right after the sequence reads: the latent of the last patch,
        closed by force if the patcher left it open (computed in scratch; the global cache is unchanged)."""
        if self.patch_starts[-1] == self.length:
            return self.memory[self.n_closed - 1]
        if self._open_latent is not None:
            return self._open_latent
        self.forced_closures += 1
        start = self.patch_starts[-1]
        out = self._run("global", "global", self._patch_feeds([(start, self.length)], self.n_closed), keep=False)
        return out["memory"][0, 0]

    def block_anchor(self, block_size: int, start: str = "patch") -> tuple[int, np.ndarray]:
        """Where a diffusion block of `block_size` rows starts and the latent [k, D] its rows read.

        "patch": at the start p of the open patch, so the block starts at a natural boundary as in training
        and reads the latent of the patch ending at p (already computed: no global call); the block's first
        length − p rows are the known bytes of the open patch. Falls back to "forced" when the open patch
        fills more than half the block or no patch is closed yet. "forced" (the paper's): at the end of the
        sequence, the open patch closed by force (one scratch global call)."""
        if start not in BLOCK_STARTS:
            raise ValueError(f"block start {start!r}; valid values are {list(BLOCK_STARTS)}")
        p = self.patch_starts[-1]
        if start == "patch" and self.n_closed >= 1 and 2 * (self.length - p) <= block_size:
            return p, self.memory[self.n_closed - 1]
        return self.length, self.last_latent()

    def block_states(self, block_ids, start: int | None = None) -> np.ndarray:
        """Encoder states [B, D] of a block placed at `start` (default: the end of the sequence), without
        touching any cache. Rows before the end are known bytes: the encoder is causal and patch-free, so
        their committed states are exactly what a scratch pass would compute. The rest go through the
        encoder in scratch mode (MASK is an ordinary id)."""
        block = np.asarray(block_ids, dtype=np.int64).reshape(-1)
        n = self.length
        start = n if start is None else start
        known = n - start
        if not (0 <= known <= block.size) or self.ids[start:n] != block[:known].tolist():
            raise ValueError(f"a block at {start} must begin with the sequence's bytes {start}..{n - 1}")
        tail = block[known:]
        self._check_room(n + tail.size)
        if known:
            prefix = self.states[start - self.states_start: n - self.states_start]
            if not tail.size:
                return prefix.copy()
        if not tail.size:
            return np.zeros((0, self.config.encoder.dim), dtype=np.float32)
        pos = np.arange(n, n + tail.size, dtype=np.int64)[None]
        out = self._run("encoder", "encoder", {"ids": tail[None], "hash_embeds": self._hash_embeds(tail)[None],
                                               "positions": pos}, keep=False)["states"][0]
        self.byte_steps["encoder"] += tail.size
        return np.concatenate([prefix, out]) if known else out

    def scratch_states(self, block_ids) -> np.ndarray:
        """Encoder states [B, D] of ids placed right after the sequence (see `block_states`)."""
        return self.block_states(block_ids)

    def block_logits(self, states: np.ndarray, memory: np.ndarray, bidirectional: bool = True,
                     start: int | None = None) -> np.ndarray:
        """decoder_block over rows placed at `start` (default: right after the sequence): the committed prefix
        before `start` is read-only and visible (window permitting), cached rows from `start` on are not;
        rows see each other bidirectionally (diffusion) or causally (verify). `memory` is [B, k, D] (per-row
        latent slots). Returns logits [B, V]."""
        bsz = states.shape[0]
        start = self.length if start is None else start
        if self._pending is not None:
            fused = self._fused_block_logits(states, memory, bidirectional, start)
            if fused is not None:
                return fused
            self.flush()
        past_k, _ = self.caches["decoder"].visible(start)
        feeds = {"states": np.asarray(states[None], dtype=np.float32),
                 "positions": np.arange(start, start + bsz, dtype=np.int64)[None],
                 "memory": np.asarray(memory[None], dtype=np.float32),
                 "attn_bias": block_bias(past_k.shape[3], bsz, self.config.decoder.window, bidirectional)}
        return self._run("decoder", "decoder_block", feeds, keep=False, before=start)["logits"][0]

    def _fused_block_logits(self, states, memory, bidirectional: bool, start: int) -> np.ndarray | None:
        """The pending decoder rows and the block in one `decoder_block` call of the smallest row count the
        backend fuses into that holds both (padding rows see only themselves), or None if there is none. The
        pending rows are causal and their K/V enter the cache; the block rows see the prefix before `start`
        and each other, never a pending row at or after `start`."""
        n0, p_states, p_memory = self._pending
        t, bsz = p_states.shape[0], states.shape[0]
        sizes = getattr(self.backend, "fused_block_rows", frozenset())  # undeclared: never fused
        size = t + bsz if sizes is None else min((b for b in sizes if b >= t + bsz), default=None)
        if size is None:
            return None
        pad = size - t - bsz
        cache = self.caches["decoder"]
        past_k, past_v = cache.visible(n0, extra=max(n0 - start, 0))
        bias, rows = fused_bias(past_k.shape[3], t, start - n0, bsz, pad, self.config.decoder.window, bidirectional)
        zeros = np.zeros((pad, *states.shape[1:]), dtype=np.float32)
        no_memory = np.zeros((pad, *memory.shape[1:]), dtype=np.float32)
        feeds = {"states": np.concatenate([p_states, states, zeros], dtype=np.float32)[None],
                 "positions": (rows + n0).astype(np.int64)[None],
                 "memory": np.concatenate([p_memory, memory, no_memory], dtype=np.float32)[None],
                 "attn_bias": bias,
                 "past_key": past_k, "past_value": past_v}
        self._pending = None
        out = self._run("decoder", "decoder_block", feeds, keep=False)
        cache.append(out["block_key"][:, :, :, :t], out["block_value"][:, :, :, :t])
        self.row_logits = _put_rows(self.row_logits, n0 - self.logits_start, out["logits"][0, :t])
        self._trim()
        return out["logits"][0, t:t + bsz]

    # ---- internals -------------------------------------------------------------------------------------------
    def _hash_embeds(self, ids: np.ndarray, before=(), drafts: bool = False) -> np.ndarray:
        """Summed hash-table rows [t, D] of `ids` placed after the sequence (and `before`, ids of the same call
        not hashed here; with `drafts`, after the outstanding drafts): host ids, then the host-side gather."""
        cfg, n = self.config, self._gmax - 1  # the hashes of new ids read at most n ids before them
        history = (self.ids[-n:] + self.draft_ids[-n:] if drafts else self.ids[-n:]) if n else []
        if n and len(before):
            history = history + [int(i) for i in before[-n:]]
        hashes = host.hash_ids(ids, cfg.hash_sizes, cfg.hash_vocab, cfg.hash_functions,
                               history=history[-n:] if n else ())
        return self._table.embed(hashes)

    def _check_room(self, n: int) -> None:
        if n > self._limit:
            raise SequenceTooLongError(f"sequence of {n} ids exceeds the model's {self._limit} byte positions; "
                                       "shorten the prompt or max_new_bytes")

    def _run(self, stack: str | tuple[str, ...], graph: str, feeds: dict, keep: bool = True,
             before: int | None = None) -> dict:
        """One graph call on `stack`'s cache (a graph over several caches, draft_step, names them all)."""
        cache = tuple(self.caches[s] for s in stack) if isinstance(stack, tuple) else self.caches[stack]
        t0 = time.perf_counter()
        if graph in self._in_place:  # the backend updates the cache itself (ORT fused layout)
            out = self.backend.run_in_place(graph, feeds, cache, keep)
        else:
            if "past_key" not in feeds:
                feeds["past_key"], feeds["past_value"] = cache.visible(before)
            out = self.backend.run(graph, feeds)
            if keep:
                cache.append(out["new_key"], out["new_value"])
        self.seconds[graph] = self.seconds.get(graph, 0.0) + time.perf_counter() - t0
        self.calls[graph] = self.calls.get(graph, 0) + 1
        return out

    def _patch_feeds(self, spans: list[tuple[int, int]], first: int) -> dict:
        cfg = self.config
        if first + len(spans) > cfg.global_transformer.max_positions:
            raise SequenceTooLongError(f"{first + len(spans)} patches exceed the global transformer's "
                                       f"{cfg.global_transformer.max_positions} positions")
        width = max(end - start for start, end in spans)
        patch_states = np.zeros((1, len(spans), width, cfg.encoder.dim), dtype=np.float32)
        mask = np.zeros((1, len(spans), width), dtype=bool)
        for i, (start, end) in enumerate(spans):
            patch_states[0, i, : end - start] = self.states[start - self.states_start: end - self.states_start]
            mask[0, i, : end - start] = True
        return {"patch_states": patch_states, "patch_mask": mask,
                "patch_positions": np.arange(first, first + len(spans), dtype=np.int64)[None]}

    def _trim(self, logits: bool = True) -> None:
        """Keep what a rollback of up to `slack` bytes needs: encoder states from the start of the patch that
        holds position length-slack (it may become the open patch again) and the last `slack` logits rows
        (not while decoder rows are pending: their logits are not written yet)."""
        cut = max(self.length - self.slack, 0)
        keep_from = self.patch_starts[bisect.bisect_right(self.patch_starts, cut) - 1]
        drop = keep_from - self.states_start
        if drop > TRIM_EVERY:
            self.states = self.states[drop:].copy()
            self.states_start += drop
        drop = self.length - max(self.slack, 1) - self.logits_start  # the last row: the next byte's logits
        if logits and drop > TRIM_EVERY:
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


def _exact_draft_rows(rows: np.ndarray, latent: int, drafted: int) -> int:
    """How many leading rows of a commit the drafts computed exactly. A draft row read the latest closed patch's
    latent (`latent`, BLT-S's stale conditioning), which is the row's true latent up to the first patch the
    commit closes; the patcher and encoder are causal, so nothing else differs."""
    n = 0
    while n < drafted and rows[n] == latent:
        n += 1
    return n
