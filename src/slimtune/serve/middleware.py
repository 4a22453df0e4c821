"""ASGI middleware: the request-body limit (413) and per-request metrics plus one structured access log line
(timed to the last byte sent, so streamed responses count their whole duration)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from slimtune.serve.errors import TooLarge
from slimtune.serve.metrics import ServeMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("slimtune.serve.access")


async def _send_error(send: Send, err: TooLarge) -> None:
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Reads the body up front (at most ``limit`` bytes, by Content-Length and by count) and replays it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = TooLarge(f"request body is over the limit of {self.limit} bytes", code="body_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _send_error(send, too_large)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _send_error(send, too_large)
                return
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class Observe:
    """Counts every request by route, adapter and status, times it, and logs it as JSON fields."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500
        scope.setdefault("state", {})

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self._done(scope, status, time.perf_counter() - start)

    def _done(self, scope: Scope, status: int, seconds: float) -> None:
        state = scope.get("state") or {}
        route = scope.get("path", "")
        route = route if route in _KNOWN else "other"
        adapter = str(state.get("adapter", "-"))
        self.metrics.observe_request(route, adapter, status, seconds)
        access_log.info("%s %s %d", scope.get("method"), route, status,
                        extra={"route": route, "status": status, "adapter": adapter,
                               "latency_ms": round(seconds * 1000, 2), "key_id": state.get("key_id"),
                               "tokens_in": state.get("tokens_in"), "tokens_out": state.get("tokens_out")})


_KNOWN = frozenset({"/health", "/metrics", "/ui", "/v1/models", "/v1/completions", "/v1/chat/completions",
                    "/admin/adapters", "/admin/rollback", "/admin/drift"})
