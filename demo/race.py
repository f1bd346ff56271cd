"""The race without the UI: request checks, per-mode generation in threads, and a Track per mode that turns
the runtime's stream events into what the panels show (live counters, each byte's origin, diffusion steps).

Origins are read from the events `Generator.stream` yields: BLT-S and BLT-DV commit [exact byte, accepted
drafts…] after each "verify" (the exact byte is the first AR sample, or the correction / bonus byte the
previous verification produced); BLT-D commits the bytes its "unmask" events filled, each at its step.
"""

from __future__ import annotations

import codecs
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import fastblt.runtime as rt
from fastblt.runtime.unmask import UnmaskConfig

LABELS = {"ar": "AR", "bltd": "BLT-D", "blts": "BLT-S", "bltdv": "BLT-DV"}
RULES = {"mode default": None, "confidence α": "confidence", "entropy-bounded γ": "entropy", "one-step": "one_step"}
SCHEDULES = ("side by side", "one after another")
MAX_PROMPT_BYTES = 16384


class BadInput(ValueError):
    """A request the demo refuses, with a message that names the problem and the fix."""


@dataclass(frozen=True)
class Request:
    prompt: str
    modes: tuple[str, ...] = ("ar", "bltd", "blts", "bltdv")
    max_new_bytes: int = 256
    block_size: int = 8
    draft_k: int = 4
    rule: str = "mode default"
    alpha: float = 0.7
    gamma: float = 1.0
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: str = ""
    schedule: str = "side by side"


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt:
        raise BadInput("the prompt is empty: type some text (code works best) for the model to continue")
    for i, ch in enumerate(prompt):
        if ch == "\x00":
            raise BadInput(f"the prompt contains a NUL character (at character {i}): remove it")
        if "\ud800" <= ch <= "\udfff":
            raise BadInput(f"the prompt contains a lone surrogate U+{ord(ch):04X} (at character {i}), which is not "
                           "valid Unicode text: remove it or send the text as UTF-8")
    if len(prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise BadInput(f"the prompt is {len(prompt.encode('utf-8'))} bytes; this demo takes at most "
                       f"{MAX_PROMPT_BYTES}: shorten it")
    return prompt


def check_request(gen: rt.Generator, req: Request, cap: int) -> dict[str, dict]:
    """Every problem a request can have, as one BadInput; returns `Generator.stream` options per mode."""
    check_prompt(req.prompt)
    if not req.modes:
        raise BadInput("no decoding mode is ticked: tick at least one of AR, BLT-D, BLT-S, BLT-DV")
    unknown = [m for m in req.modes if m not in LABELS]
    if unknown:
        raise BadInput(f"unknown modes {unknown}: valid modes are {list(LABELS)}")
    if not _is_int(req.max_new_bytes) or not 1 <= req.max_new_bytes <= cap:
        raise BadInput(f"max new bytes = {req.max_new_bytes!r}: this server generates 1 to {cap} bytes per "
                       "request (its --max-new-bytes-cap); ask for fewer")
    diffusion = [m for m in req.modes if m in ("bltd", "bltdv")]
    sizes = list(gen.config.block_sizes or ())
    if diffusion and not gen.config.diffusion_trained:
        raise BadInput(f"this model's decoder is not diffusion-trained, so it cannot run {diffusion}: untick them")
    if diffusion and req.block_size not in sizes:
        raise BadInput(f"block size {req.block_size!r} is not one this model has: choose one of {sizes}")
    if not _is_int(req.draft_k) or not 1 <= req.draft_k <= 64:
        raise BadInput(f"draft k = {req.draft_k!r}: choose an integer from 1 to 64")
    if req.rule not in RULES:
        raise BadInput(f"unmasking rule {req.rule!r}: choose one of {list(RULES)}")
    if req.schedule not in SCHEDULES:
        raise BadInput(f"schedule {req.schedule!r}: choose one of {list(SCHEDULES)}")
    if req.seed is not None and not _is_int(req.seed):
        raise BadInput(f"seed = {req.seed!r}: use a whole number (or leave it empty)")
    try:
        rt.SamplingConfig(req.temperature, 0, req.top_p, req.seed).validate()
        unmask = None if RULES[req.rule] is None else UnmaskConfig(RULES[req.rule], req.alpha, req.gamma).validate()
    except ValueError as e:
        raise BadInput(str(e)) from None
    common = dict(max_new_bytes=req.max_new_bytes, temperature=float(req.temperature), top_p=float(req.top_p),
                  seed=req.seed, stop=[req.stop] if req.stop else None)
    out = {}
    for mode in req.modes:
        extra = {"blts": dict(draft_k=req.draft_k)}.get(mode, {})
        if mode in ("bltd", "bltdv"):
            extra = dict(block_size=req.block_size, unmask=unmask)
        out[mode] = dict(mode=mode, **common, **extra)
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class Block:
    """One diffusion block for the replay: the sequence's last `size` bytes when it opened (its known head
    rows come from there), per step the positions filled with their bytes and confidences, and for BLT-DV
    the exact byte's row and how many drafts verification accepted."""
    size: int
    context: bytes
    steps: list[dict] = field(default_factory=list)
    exact: int | None = None  # BLT-DV: the exact byte (row `known`)
    known_rows: int | None = None  # BLT-DV: rows before the exact byte (BLT-D: derived from the steps)
    accepted: int | None = None

    @property
    def known(self) -> int:
        """Rows holding bytes already in the sequence (the open patch's start; 0 with the paper's layout)."""
        if self.known_rows is not None:
            return self.known_rows
        return min((p for s in self.steps for p in s["positions"]), default=self.size)

    def by_position(self) -> dict[int, tuple[int, float, int]]:
        """Row -> (step it was filled at, its confidence, its id)."""
        out = {}
        for s in self.steps:
            confidences = s.get("confidences") or [float("nan")] * len(s["positions"])
            for p, c, i in zip(s["positions"], confidences, s["ids"], strict=True):
                out[p] = (s["step"], c, i)
        return out


@dataclass
class Track:
    """One mode's run as the panels show it, updated event by event."""
    mode: str
    prompt: bytes
    block_size: int = 8
    data: bytearray = field(default_factory=bytearray)
    origins: list[tuple[str, int]] = field(default_factory=list)  # per byte: (kind, diffusion step or 0)
    started: float | None = None
    elapsed: float = 0.0
    n_enc: int = 0
    n_dec: int = 0
    bandwidth_gb: float = 0.0
    drafted: int = 0
    accepted: int = 0
    blocks: list[Block] = field(default_factory=list)
    result: rt.Result | None = None
    error: str | None = None
    pending: list[tuple[str, int]] = field(default_factory=list)  # origins of the commit the next text holds
    next_exact: str = "ar"  # the first exact byte is a plain AR sample; later ones come from verification

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    @property
    def bytes_per_s(self) -> float:
        if self.result is not None:
            return self.result.bytes_per_s  # decoding only, as blt-run reports it
        return len(self.data) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    def steps_per_block(self) -> list[int]:
        return [len(b.steps) for b in self.blocks]

    def feed(self, event: dict) -> None:
        kind = event["type"]
        if kind == "unmask":
            if event["step"] == 1:
                self._open_block()
            self.blocks[-1].steps.append(event)
        elif kind == "draft" and self.mode == "bltdv":
            if not self.blocks or self.blocks[-1].exact is not None:  # no masked row: no unmask event opened it
                self._open_block()
            block = self.blocks[-1]
            block.exact, block.known_rows = event["ids"][0], self.block_size - len(event["ids"])
        elif kind == "verify":
            self.drafted += event["drafted"]
            self.accepted += event["accepted"]
            drafts = [("draft", 0)] * event["accepted"]
            if self.mode == "bltdv" and self.blocks:
                block = self.blocks[-1]
                block.accepted = event["accepted"]
                steps = block.by_position()
                drafts = [("draft", steps.get(block.known + 1 + j, (0,))[0]) for j in range(event["accepted"])]
            self.pending = [(self.next_exact, 0), *drafts]
            self.next_exact = "fix"
        elif kind == "text":
            self._on_text(event)
        elif kind == "done":
            self._finish(event["result"])

    def _open_block(self) -> None:
        seq = self.prompt + bytes(self.data)
        self.blocks.append(Block(self.block_size, seq[-self.block_size:]))

    def _on_text(self, event: dict) -> None:
        chunk = event["bytes"]
        if chunk:
            if self.mode == "bltd" and self.blocks:
                block = self.blocks[-1]
                steps = block.by_position()
                self.pending = [("diffusion", steps.get(block.known + j, (0,))[0]) for j in range(len(chunk))]
            origins = self.pending[:len(chunk)]
            origins += [("ar", 0)] * (len(chunk) - len(origins))
            self.data.extend(chunk)
            self.origins.extend(origins)
            self.pending = []
        self.n_enc = event.get("n_enc", self.n_enc)
        self.n_dec = event.get("n_dec", self.n_dec)
        self.bandwidth_gb = event.get("bandwidth_gb", self.bandwidth_gb)
        self.elapsed = time.perf_counter() - self.started if self.started else 0.0

    def _finish(self, result: rt.Result) -> None:
        self.result = result
        del self.data[len(result.bytes):]  # a stop string may end inside bytes already shown
        del self.origins[len(result.bytes):]
        c = result.counters
        self.n_enc, self.n_dec, self.bandwidth_gb = c["n_enc"], c["n_dec"], c["bandwidth_gb"]
        self.drafted, self.accepted = c.get("bytes_drafted", 0), c.get("bytes_accepted", 0)
        self.elapsed = result.seconds

    def segments(self) -> Iterator[tuple[str, tuple[str, int]]]:
        """(text, origin) runs: decoded the way the runtime decodes (invalid bytes become U+FFFD), each
        character taking the origin of its last byte."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        run, origin = [], None
        for byte, o in zip(self.data, self.origins, strict=True):
            piece = decoder.decode(bytes([byte]))
            if not piece:
                continue
            if o != origin and run:
                yield "".join(run), origin
                run = []
            run.append(piece)
            origin = o
        tail = decoder.decode(b"", final=True)
        if tail:
            run.append(tail)
        if run:
            yield "".join(run), origin


def race(gen: rt.Generator, req: Request, cap: int, stop_flag: threading.Event | None = None) -> Iterator[dict]:
    """Run the request's modes (in threads side by side, or one after another in one thread); yields the
    {mode: Track} dict after every event batch, the Tracks finished at the end. Setting `stop_flag` ends
    every stream early (a visitor who leaves)."""
    options = check_request(gen, req, cap)
    prompt = req.prompt.encode("utf-8")
    tracks = {m: Track(m, prompt, req.block_size) for m in options}
    events: queue.Queue = queue.Queue()
    stop_flag = stop_flag or threading.Event()

    def work(modes: list[str]) -> None:
        for mode in modes:
            try:
                events.put((mode, {"type": "start", "t": time.perf_counter()}))
                for event in gen.stream(req.prompt, **options[mode]):
                    events.put((mode, event))
                    if stop_flag.is_set():
                        break
            except Exception as e:  # shown in the mode's panel; the others go on
                events.put((mode, {"type": "error", "message": f"{type(e).__name__}: {e}"}))
            if stop_flag.is_set():
                return

    lanes = [[m] for m in options] if req.schedule == SCHEDULES[0] else [list(options)]
    threads = [threading.Thread(target=work, args=(lane,), daemon=True) for lane in lanes]
    for t in threads:
        t.start()
    try:
        while not all(t.done for t in tracks.values()):
            mode, event = events.get()
            batch = [(mode, event)]
            while not events.empty():
                batch.append(events.get_nowait())
            for mode, event in batch:
                track = tracks[mode]
                if event["type"] == "start":
                    track.started = event["t"]
                elif event["type"] == "error":
                    track.error = event["message"]
                else:
                    track.feed(event)
            yield tracks
    finally:
        stop_flag.set()
        for t in threads:
            t.join(timeout=5)


def patcher_view(gen: rt.Generator, data: bytes) -> dict:
    """Entropy of each byte's prediction (nats), the patch starts (byte offsets) and θ, from one prefill of
    `data` (a fresh Session, as generation patches it)."""
    from fastblt.runtime import host

    session = rt.Session(gen.backend, slack=0)
    session.commit(host.encode(data))
    entropies = session.entropies[:-1][: len(data)]  # entropies[i]: the distribution byte i was drawn from
    starts = [s - 1 for s in session.patch_starts if 1 <= s <= len(data)]
    return {"bytes": bytes(data), "entropies": entropies, "starts": starts, "threshold": gen.config.patch_threshold,
            "max_patch_length": gen.config.max_patch_length}
