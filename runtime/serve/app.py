"""The FastAPI app: /v1/completions (JSON or server-sent events), /v1/models, /health, /metrics.

One loaded Generator serves every request; generation runs on a WorkerPool so the event loop keeps answering
(health checks, metrics, 429s) while workers decode. A watcher on the ASGI receive channel notices a client that
leaves — queued, generating or streaming — and cancels its job, which frees the worker within one decoding step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass

from fastblt.runtime.serve import SERVE_HINT

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError(SERVE_HINT) from None

from fastblt.runtime.generator import MAX_NEW_BYTES_LIMIT
from fastblt.runtime.serve import protocol as p
from fastblt.runtime.serve.metrics import Metrics
from fastblt.runtime.serve.worker import QueueFull, StopSafeText, WorkerPool
from fastblt.runtime.session import SequenceTooLongError


@dataclass(frozen=True)
class ServeConfig:
    model: str = "fastblt"
    workers: int = 1
    max_queue: int = 16
    max_new_bytes_cap: int = 4096
    default_max_tokens: int = 16


def create_app(generator, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The app over one loaded Generator (its backend is shared by every worker thread)."""
    if not 1 <= config.max_new_bytes_cap <= MAX_NEW_BYTES_LIMIT:
        raise ValueError(f"max_new_bytes_cap={config.max_new_bytes_cap} must be in [1, {MAX_NEW_BYTES_LIMIT}]")
    pool = WorkerPool(config.workers, config.max_queue)
    metrics = Metrics(pool)
    cfg = generator.config
    context = min(cfg.encoder.max_positions, cfg.decoder.max_positions, cfg.patcher.max_positions)
    limits = p.Limits(config.model, config.max_new_bytes_cap, context, config.default_max_tokens)
    manifest = getattr(generator.backend, "manifest", None)
    block_sizes = list(manifest.block_sizes if manifest is not None else cfg.block_sizes)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.shutdown()

    app = FastAPI(title="fastblt", lifespan=lifespan)
    app.state.pool, app.state.metrics = pool, metrics

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error(p.APIError(exc.status_code, str(exc.detail), code=code))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model, "workers": pool.workers, "active": pool.active,
                "queued": pool.queued, "max_queue": pool.max_queue}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models():
        card = {"id": config.model, "object": "model", "created": 0, "owned_by": "fastblt",
                "fastblt": {"backend": generator.backend.name, "layout": getattr(generator.backend, "layout", None),
                            "precision": getattr(generator.backend, "precision", None),
                            "modes": ["ar", "blts"] + (["bltd", "bltdv"] if block_sizes else []),
                            "block_sizes": block_sizes, "context_bytes": context - 1,
                            "max_new_bytes_cap": config.max_new_bytes_cap}}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        mode = "invalid"
        try:
            req = p.parse_completion(await request.body(), limits)
            mode = req.mode
            if mode in ("bltd", "bltdv") and block_sizes and req.options["block_size"] not in block_sizes:
                raise p.APIError(400, f"block_size={req.options['block_size']} is not served: this model (its "
                                 f"bundle) has block sizes {block_sizes}", param="block_size")
            try:
                events = generator.stream(req.prompt, **req.options)
            except ValueError as e:
                raise p.APIError(400, str(e), param=p.param_of(str(e))) from None
            job = _Job(asyncio.get_running_loop(), request)
            try:
                pool.submit(events, job.emit, job.cancel)
            except QueueFull as e:
                events.close()
                metrics.finished(mode, "rejected")
                return _error(p.APIError(429, str(e), code="queue_full", type="rate_limit_error"),
                              headers={"Retry-After": "1"})
        except p.APIError as e:
            metrics.finished(mode, "bad_request")
            return _error(e)
        start = time.perf_counter()
        try:
            first = await job.next()
            if first is None or first["type"] == "error":  # left while queued / failed before any output
                return _failure(first, job, mode, metrics)
            if req.stream:
                body = _sse(first, job, req, config.model, metrics, start)
                return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            return await _complete(first, job, req, config.model, metrics, start)
        except BaseException:
            job.close()
            raise

    return app


class _Job:
    """The event-loop side of one generation: a queue the worker fills, a cancel flag, a disconnect watcher."""

    def __init__(self, loop: asyncio.AbstractEventLoop, request: Request) -> None:
        self.loop, self.queue, self.cancel = loop, asyncio.Queue(), threading.Event()
        self.gone = asyncio.ensure_future(_disconnected(request))

    def emit(self, event: dict) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already closed (server shutdown)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def next(self) -> dict | None:
        """The worker's next event, or None once the client has disconnected."""
        if self.gone.done():
            return None
        get = asyncio.ensure_future(self.queue.get())
        await asyncio.wait({get, self.gone}, return_when=asyncio.FIRST_COMPLETED)
        if get.done():
            return get.result()
        get.cancel()
        return None

    def close(self) -> None:
        self.cancel.set()
        self.gone.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _error(e: p.APIError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _runtime_error(exc: Exception) -> p.APIError:
    if isinstance(exc, SequenceTooLongError):
        return p.APIError(400, str(exc), code="context_length_exceeded")
    return p.APIError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")


def _failure(event: dict | None, job: _Job, mode: str, metrics: Metrics) -> Response:
    job.close()
    if event is None:
        metrics.finished(mode, "disconnected")
        return Response(status_code=499)  # nobody is listening any more
    err = _runtime_error(event["error"])
    metrics.finished(mode, "bad_request" if err.status < 500 else "error")
    return _error(err)


async def _complete(event: dict, job: _Job, req: p.CompletionRequest, model: str, metrics: Metrics,
                    start: float) -> Response:
    try:
        while event is not None and event["type"] not in ("done", "error"):
            if event["type"] == "text":
                metrics.generated(req.mode, len(event["bytes"]))
            event = await job.next()
        if event is None or event["type"] == "error":
            return _failure(event, job, req.mode, metrics)
        result = event["result"]
        metrics.done(result, time.perf_counter() - start)
        text = (req.prompt + result.text) if req.echo else result.text
        body = p.Ids(model).completion(text, p.finish_reason(result.stop_reason), p.usage(result),
                                       p.fastblt_info(result))
        return Response(p.dumps(body), media_type="application/json")
    finally:
        job.close()


async def _sse(event: dict, job: _Job, req: p.CompletionRequest, model: str, metrics: Metrics, start: float):
    """Server-sent events: one chunk per stop-safe UTF-8 text piece, a final chunk with finish_reason and the
    fastblt report, a usage chunk when stream_options.include_usage, then [DONE]."""
    ids, text = p.Ids(model), StopSafeText([s.encode("utf-8") for s in req.options["stop"]])
    outcome = "disconnected"
    try:
        if req.echo and req.prompt:
            yield _data(ids.chunk(req.prompt))
        while event is not None:
            if event["type"] == "text":
                metrics.generated(req.mode, len(event["bytes"]))
                piece = text.feed(event["bytes"])
                if piece:
                    yield _data(ids.chunk(piece))
            elif event["type"] == "done":
                result = event["result"]
                metrics.done(result, time.perf_counter() - start)
                outcome = "ok"
                tail = text.finish(result.bytes)
                if tail:
                    yield _data(ids.chunk(tail))
                yield _data(ids.chunk("", p.finish_reason(result.stop_reason), fastblt=p.fastblt_info(result)))
                if req.include_usage:
                    yield _data(ids.usage_chunk(p.usage(result)))
                yield "data: [DONE]\n\n"
                return
            elif event["type"] == "error":
                err = _runtime_error(event["error"])
                outcome = "bad_request" if err.status < 500 else "error"
                yield _data(err.body())
                return
            event = await job.next()
    finally:
        job.close()
        if outcome != "ok":
            metrics.finished(req.mode, outcome)


def _data(obj: dict) -> str:
    return f"data: {p.dumps(obj)}\n\n"
