"""``create_app`` and ``serve``: the OpenAI-compatible HTTP server for one base model and its registry adapters.

Routes: ``/health`` (open); ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (scope inference);
``/admin/adapters``, ``/admin/drift``, ``POST /admin/rollback`` (scope admin); ``/metrics`` and ``/ui`` (any
valid key). With no keys file, nothing is authenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from slimtune.errors import RegistryError
from slimtune.serve import api
from slimtune.serve.api import ChatRequest, CompletionRequest, RollbackRequest
from slimtune.serve.batcher import Job
from slimtune.serve.config import ServeConfig
from slimtune.serve.errors import ApiError, BadRequest, NotFound, Timeout
from slimtune.serve.middleware import BodyLimit, Observe
from slimtune.serve.state import ServerState, load_base

log = logging.getLogger(__name__)


def _state(request: Request) -> ServerState:
    return request.app.state.slimtune  # type: ignore[no-any-return]


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc) or "body"
    got = f" (got {first['input']!r})" if "input" in first and loc else ""
    more = f"; and {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
    return f"invalid field '{where}': {first.get('msg', 'invalid')}{got}{more}", (loc[0] if loc else None)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(BadRequest(message, param=param, code="invalid_request").body(), status_code=400)


async def _next_event(job: Job, deadline: float) -> tuple[str, Any]:
    left = deadline - asyncio.get_running_loop().time()
    try:
        return await asyncio.wait_for(job.events.get(), timeout=max(left, 0.001))
    except TimeoutError as exc:
        job.cancelled.set()
        raise Timeout("the request ran past the server's timeout and was cancelled", code="timeout") from exc


async def _admit(request: Request, body: CompletionRequest | ChatRequest, prompt: str) -> tuple[Job, int, float]:
    st = _state(request)
    target = st.manager.resolve(body.model)
    request.state.adapter = target.label
    ids = list(st.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    max_tokens = st.check_lengths(len(ids), body.max_tokens)
    loop = asyncio.get_running_loop()
    job = Job(ids, target, max_tokens, loop, body.temperature, body.top_p, body.seed, body.stop_strings(),
              body.stream)
    st.batcher.submit(job)
    request.state.tokens_in = len(ids)
    st.metrics.tokens_in.labels(adapter=target.label).inc(len(ids))
    return job, len(ids), loop.time() + st.config.request_timeout_s


async def _respond(request: Request, body: CompletionRequest | ChatRequest, prompt: str, chat: bool) -> Response:
    job, n_prompt, deadline = await _admit(request, body, prompt)
    rid = api.new_id("chatcmpl" if chat else "cmpl")
    label = job.target.label
    try:
        kind, payload = await _next_event(job, deadline)
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    if kind == "error":
        raise payload
    if not body.stream:
        while kind == "delta":
            kind, payload = await _next_event(job, deadline)
        text, result = payload
        request.state.tokens_out = len(result.token_ids)
        build = api.chat_body if chat else api.completion_body
        return JSONResponse(build(rid, label, text, result, n_prompt))
    return StreamingResponse(_stream(job, rid, label, chat, (kind, payload), deadline),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _stream(job: Job, rid: str, label: str, chat: bool, first: tuple[str, Any],
                  deadline: float) -> AsyncIterator[str]:
    kind, payload = first
    opened = False
    try:
        while True:
            if kind == "delta":
                yield api.chunk(rid, label, chat, payload, first=not opened)
                opened = True
            elif kind == "done":
                yield api.chunk(rid, label, chat, None, result=payload[1], first=not opened)
                break
            else:
                yield f"data: {json.dumps(payload.body())}\n\n"
                break
            try:
                kind, payload = await _next_event(job, deadline)
            except Timeout as exc:
                kind, payload = "error", exc
        yield api.DONE
    finally:
        job.cancelled.set()  # a client that went away stops its row at the next token


def _install_inference(app: FastAPI) -> None:
    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        st = _state(request)
        return {"status": "ok", "queued": st.batcher.queue.qsize(), "loaded": [str(r) for r in st.manager.loaded()]}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        st = _state(request)
        st.authorize(request, "inference")
        ids = [st.config.base_name, *_registry_model_ids(st)]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "slimtune"}
                                           for i in ids]}

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        _state(request).authorize(request, "inference")
        return await _respond(request, body, body.text(), chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: ChatRequest) -> Response:
        st = _state(request)
        st.authorize(request, "inference")
        messages = [m.model_dump() for m in body.messages]
        try:
            prompt = st.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # a template may raise on role orders it does not support
            raise BadRequest(f"the chat template refused these messages: {exc}", param="messages") from exc
        return await _respond(request, body, str(prompt), chat=True)


def _registry_model_ids(st: ServerState) -> list[str]:
    if st.config.registry is None:
        return []
    reg = st.manager.registry()
    ids: list[str] = []
    for name in reg.names():
        ids.append(name)
        ids += [f"{name}@{alias}" for alias in sorted(reg.aliases(name))]
        ids += [str(rec.ref) for rec in reg.list(name)]
    return ids


def _install_admin(app: FastAPI) -> None:
    @app.get("/admin/adapters")
    async def adapters(request: Request) -> dict[str, Any]:
        st = _state(request)
        st.authorize(request, "admin")
        return adapter_overview(st)

    @app.get("/admin/drift")
    async def drift(request: Request) -> dict[str, Any]:
        st = _state(request)
        st.authorize(request, "admin")
        return {a: (r.to_dict() if r else None) for a, r in st.monitor.results().items()}

    @app.post("/admin/rollback")
    async def rollback(request: Request, body: RollbackRequest) -> dict[str, Any]:
        st = _state(request)
        key = st.authorize(request, "admin")
        reason = body.reason or f"rollback through the server admin API by {key.id if key else 'anonymous'}"
        try:
            result = st.manager.registry().rollback(body.name, body.alias, reason=reason)
        except RegistryError as exc:
            raise NotFound(str(exc), code="rollback_failed") from exc
        st.manager.forget(f"{body.name}@{body.alias}")
        log.warning("rolled back %s@%s to %s", body.name, body.alias, result.ref,
                    extra={"event": "rollback", "key_id": key.id if key else None})
        return {"name": body.name, "alias": body.alias, "version": result.ref.version,
                "previous": result.previous, "reason": reason}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        st = _state(request)
        st.authorize(request, None, limit=False)
        return Response(st.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/ui")
    async def ui(request: Request) -> HTMLResponse:
        from slimtune.serve.ui import render_status

        st = _state(request)
        st.authorize(request, None, limit=False)
        return HTMLResponse(render_status(st))


def adapter_overview(st: ServerState) -> dict[str, Any]:
    """Registry models with versions and aliases, what is loaded, live metrics and automatic rollbacks."""
    models: dict[str, Any] = {}
    if st.config.registry is not None:
        reg = st.manager.registry()
        for name in reg.names():
            models[name] = {"versions": [r.version for r in reg.list(name)], "aliases": reg.aliases(name)}
    return {"base": st.config.base_name, "models": models, "loaded": [str(r) for r in st.manager.loaded()],
            "live": st.metrics.snapshot(), "rollbacks": [vars(e) for e in st.rollback.events]}


def create_app(config: ServeConfig, model: Any = None, tokenizer: Any = None) -> FastAPI:
    """The server app; ``model``/``tokenizer`` default to ``config.base`` (``builtin:smollm2`` or a folder)."""
    if model is None or tokenizer is None:
        model, tokenizer = load_base(config.base)
    st = ServerState(config, model, tokenizer)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        st.batcher.start()
        log.info("serving base %s with registry %s", config.base, config.registry)
        try:
            yield
        finally:
            st.close()

    app = FastAPI(title="slimtune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.slimtune = st
    _install_errors(app)
    _install_inference(app)
    _install_admin(app)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)  # type: ignore[arg-type]
    app.add_middleware(Observe, metrics=st.metrics)  # type: ignore[arg-type]
    return app


def serve(config: ServeConfig) -> None:
    """Run the server with uvicorn until interrupted (what ``slimtune serve`` calls)."""
    import uvicorn

    from slimtune.serve.logs import configure_json_logging

    if config.json_logs:
        configure_json_logging()
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=int(config.request_timeout_s))
