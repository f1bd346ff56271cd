"""The public generation API: a Generator over one backend, `generate` → Result, `stream` → events."""

from __future__ import annotations

import codecs
import importlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastblt.runtime import host
from fastblt.runtime.modes import MODES
from fastblt.runtime.sampling import Sampler, SamplingConfig
from fastblt.runtime.session import Session

MAX_NEW_BYTES_LIMIT = 1 << 20
_MODE_MODULES = {"ar": "ar", "bltd": "diffusion", "blts": "selfspec", "bltdv": "diffusion_verify"}


@dataclass
class Result:
    text: str
    bytes: bytes
    mode: str
    stop_reason: str
    prompt_bytes: int
    counters: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def bytes_per_s(self) -> float:
        return len(self.bytes) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "bytes_hex": self.bytes.hex(), "mode": self.mode,
                "stop_reason": self.stop_reason, "prompt_bytes": self.prompt_bytes,
                "new_bytes": len(self.bytes), "seconds": round(self.seconds, 6),
                "bytes_per_s": round(self.bytes_per_s, 3), "counters": self.counters}


class Generator:
    def __init__(self, backend) -> None:
        self.backend = backend
        self.config = backend.config

    def close(self) -> None:
        self.backend.close()

    def stream(self, prompt: str | bytes = b"", mode: str = "ar", max_new_bytes: int = 256,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               stop: list[str | bytes] | None = None, **mode_options) -> Iterator[dict]:
        """Events: {"type": "text", "text", "bytes"} as bytes commit (never splitting a UTF-8 character),
        mode-specific events, and a final {"type": "done", "result": Result}."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes are {list(MODES)}")
        if not isinstance(max_new_bytes, int) or isinstance(max_new_bytes, bool) or not (
                1 <= max_new_bytes <= MAX_NEW_BYTES_LIMIT):
            raise ValueError(f"max_new_bytes={max_new_bytes!r} must be an integer in [1, {MAX_NEW_BYTES_LIMIT}]")
        sampler = Sampler(SamplingConfig(temperature, top_k, top_p, seed), self.config.vocab_size)
        stops = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in (stop or []) if s]
        module = importlib.import_module(f"fastblt.runtime.modes.{_MODE_MODULES[mode]}")
        ids = host.encode(prompt)
        start = time.perf_counter()
        session = Session(self.backend)
        session.commit(ids)
        out = bytearray()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        reason = "max_new_bytes"
        events = module.run(session, sampler, max_new_bytes, **mode_options)
        for event in events:
            if event["type"] != "commit":
                yield event
                continue
            before = len(out)
            for i in event["ids"]:
                if i == host.EOS:
                    reason = "eos"
                    break
                if len(out) >= max_new_bytes:
                    break
                out.append(i - host.OFFSET)
            hit = _find_stop(out, stops, len(out) - before)
            if hit is not None:
                del out[max(hit, 0):]
                reason = "stop"
            chunk = bytes(out[before:])
            text = decoder.decode(chunk)
            if text or chunk:
                yield {"type": "text", "text": text, "bytes": chunk}
            if reason in ("eos", "stop") or len(out) >= max_new_bytes:
                break
        events.close()
        seconds = time.perf_counter() - start
        tail = decoder.decode(b"", final=True)
        if tail:
            yield {"type": "text", "text": tail, "bytes": b""}
        counters = {"graph_calls": dict(session.calls), "patches": session.n_closed, "length": session.length}
        result = Result(bytes(out).decode("utf-8", errors="replace"), bytes(out), mode, reason,
                        len(ids) - 1, counters, seconds)
        yield {"type": "done", "result": result}

    def generate(self, prompt: str | bytes = b"", **options) -> Result:
        for event in self.stream(prompt, **options):
            if event["type"] == "done":
                return event["result"]
        raise RuntimeError("generation ended without a result")  # unreachable: stream always finishes


def _find_stop(out: bytearray, stops: list[bytes], new: int) -> int | None:
    """Earliest position where a stop string ends within the newly added bytes, or None."""
    best = None
    for s in stops:
        lo = max(0, len(out) - new - len(s) + 1)
        at = out.find(s, lo)
        if at != -1 and (best is None or at < best):
            best = at
    return best
