"""Generation off the event loop: a bounded pool of threads sharing one loaded Generator (one Session per
request), admission control for the queue, cancellation between decoding steps, and stop-safe text streaming."""

from __future__ import annotations

import codecs
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor


class QueueFull(Exception):
    """Every worker is busy and --max-queue requests already wait."""


class WorkerPool:
    """`workers` threads run generations; at most `max_queue` more wait. A job checks its cancel flag before it
    starts and between decoding events, so a client that leaves frees its worker within one step."""

    def __init__(self, workers: int, max_queue: int) -> None:
        if workers < 1 or max_queue < 0:
            raise ValueError(f"workers={workers} must be ≥ 1 and max_queue={max_queue} ≥ 0")
        self.workers, self.max_queue = workers, max_queue
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="fastblt-generate")
        self._lock = threading.Lock()
        self._pending = 0  # admitted and not finished: running + waiting
        self._active = 0

    @property
    def active(self) -> int:
        return self._active

    @property
    def queued(self) -> int:
        with self._lock:
            return self._pending - self._active

    def submit(self, events: Iterator[dict], emit: Callable[[dict], None], cancel: threading.Event) -> None:
        """Run `events` on a worker, passing each event to `emit` (from the worker thread), then
        {"type": "end", "outcome": "ok" | "cancelled"} or {"type": "error", "error": exc}. Raises QueueFull."""
        with self._lock:
            if self._pending >= self.workers + self.max_queue:
                raise QueueFull(f"server busy: {self._active} of {self.workers} workers generating and "
                                f"{self._pending - self._active} requests waiting, the most allowed (--workers "
                                f"{self.workers}, --max-queue {self.max_queue}); retry later")
            self._pending += 1
        try:
            self._executor.submit(self._run, events, emit, cancel)
        except RuntimeError:  # the pool is shut down
            with self._lock:
                self._pending -= 1
            raise

    def _run(self, events: Iterator[dict], emit: Callable[[dict], None], cancel: threading.Event) -> None:
        end = {"type": "end", "outcome": "cancelled"}
        try:
            if cancel.is_set():
                return
            with self._lock:
                self._active += 1
            try:
                for event in events:
                    if cancel.is_set():
                        return
                    emit(event)
                end["outcome"] = "ok"
            except Exception as exc:  # reported to the request, never kills the worker
                end = {"type": "error", "error": exc}
            finally:
                events.close()
                with self._lock:
                    self._active -= 1
        finally:
            with self._lock:
                self._pending -= 1
            emit(end)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def held_back(buf: bytes | bytearray, stops: list[bytes]) -> int:
    """How many trailing bytes of `buf` could still begin a stop string (the generator may cut them later)."""
    held = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(buf)), held, -1):
            if buf.endswith(s[:k]):
                held = k
                break
    return held


class StopSafeText:
    """Committed bytes → UTF-8-safe text pieces whose concatenation is exactly the final Result.text: bytes that
    could begin a stop string wait until they cannot, and the rest goes through one incremental decoder."""

    def __init__(self, stops: list[bytes]) -> None:
        self.stops = [s for s in stops if s]
        self.buf = bytearray()
        self.sent = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> str:
        self.buf += chunk
        safe = len(self.buf) - held_back(self.buf, self.stops)
        if safe <= self.sent:
            return ""
        piece = self._decoder.decode(bytes(self.buf[self.sent:safe]))
        self.sent = safe
        return piece

    def finish(self, final: bytes) -> str:
        """The rest of the text, given the generation's final bytes (a stop string may have cut the tail)."""
        if final[:self.sent] != self.buf[:self.sent]:
            raise RuntimeError("streamed bytes disagree with the final result")  # held_back makes this impossible
        return self._decoder.decode(final[self.sent:], final=True)
