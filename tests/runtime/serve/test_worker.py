"""WorkerPool admission and cancellation; StopSafeText pieces always add up to the final text."""

from __future__ import annotations

import random
import threading
import time

import pytest

from fastblt.runtime.serve.worker import QueueFull, StopSafeText, WorkerPool, held_back


def test_held_back():
    assert held_back(b"abc wo", [b"world"]) == 2
    assert held_back(b"abc w", [b"xyz", b"wx", b"c w!"]) == 3
    assert held_back(b"abc", [b"abc"]) == 0  # a whole stop string is the generator's to cut, not a prefix
    assert held_back(b"", [b"ab"]) == 0


def _generate(data: bytes, stops: list[bytes], sizes: list[int]):
    """Commits of `sizes` bytes cut at the first stop string, as Generator emits them: (chunks, final bytes)."""
    out, chunks, pos = bytearray(), [], 0
    for n in sizes:
        before = len(out)
        out += data[pos:pos + n]
        pos += n
        hits = [out.find(s) for s in stops if out.find(s) != -1]
        if hits:
            del out[min(hits):]
        chunks.append(bytes(out[before:]))
        if hits or pos >= len(data):
            break
    return chunks, bytes(out)


def test_stop_safe_text_adds_up_to_the_final_text():
    rng = random.Random(0)
    alphabet = "ab é東\n".encode() + b"\xff\xc3"
    for _ in range(500):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
        i = rng.randrange(len(data))
        stops = [data[i:i + rng.randrange(1, 5)], b"zz"] if rng.random() < 0.8 else []
        sizes = [rng.randrange(1, 6) for _ in range(40)]
        chunks, final = _generate(data, stops, sizes)
        text = StopSafeText(stops)
        pieces = [text.feed(c) for c in chunks]
        assert "".join(pieces) + text.finish(final) == final.decode("utf-8", errors="replace"), (data, stops)


def _events(n: int, seen: list, step: float = 0.0):
    for i in range(n):
        seen.append(i)
        time.sleep(step)
        yield {"type": "text", "i": i}


def test_pool_admission_and_cancel():
    pool = WorkerPool(1, 1)
    got, done = [], threading.Event()

    def emit(event):
        got.append(event)
        if event["type"] == "end":
            done.set()

    seen, cancel = [], threading.Event()
    pool.submit(_events(10_000, seen, 0.001), emit, cancel)  # runs
    pool.submit(_events(3, []), lambda e: None, threading.Event())  # waits
    with pytest.raises(QueueFull, match=r"1 of 1 workers generating and 1 requests waiting.*--max-queue 1"):
        pool.submit(_events(3, []), lambda e: None, threading.Event())
    while not seen:
        time.sleep(0.001)
    cancel.set()
    assert done.wait(10) and got[-1] == {"type": "end", "outcome": "cancelled"} and len(seen) < 10_000
    deadline = time.monotonic() + 10
    while pool.queued or pool.active:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pool.shutdown()
    with pytest.raises(ValueError, match="workers=0 must be ≥ 1"):
        WorkerPool(0, 1)
