"""The HTTP mechanics of ``metasched serve`` in FastAPI's and Starlette's own terms (imported by serve only).

- ``require_token``: the bearer token as a dependency of every route (``open_endpoints`` excepted).
- ``RawBody``: the body as a dependency that reads at most ``max_body_bytes`` (413 beyond), so an
  oversized or endless body is refused before anything parses it.
- ``OneLineErrors``: the route class; an unexpected exception becomes a JSON 500 and one log line
  (Starlette's own 500 handler re-raises to uvicorn, which logs a traceback per event).
- exception handlers: InputError is the client's 422, ConfigError a 500 naming the problem.
- ``RequestMetrics``: ASGI middleware counting every answer, also 404/405 that reach no route,
  labelled by the route's template (ids would explode the label set).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from metasched.domain.errors import ConfigError, InputError
from metasched.serve.auth import authorized
from metasched.serve.state import ServeState

log = logging.getLogger("metasched.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Prefixes whose sub-paths an open endpoint opens too: /v1/status/{id}, /docs/oauth2-redirect.
OPEN_PREFIXES = ("/v1/status", "/docs")


def error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def is_open(path: str, open_endpoints: tuple[str, ...]) -> bool:
    """An open endpoint opens what lies under it too: /v1/status/{id}, /docs/oauth2-redirect."""
    if path in open_endpoints:
        return True
    return any(path.startswith(f"{e}/") for e in OPEN_PREFIXES if e in open_endpoints)


def serve_state(request: Request) -> ServeState:
    """The running service's state, set on the app by ``create_app``."""
    state: ServeState = request.app.state.serve
    return state


async def require_token(request: Request) -> None:
    """Dependency of every route: 401 unless the request carries the configured bearer token or its
    path is open. Reads the config per request, so a SIGHUP changes token and open endpoints at once."""
    settings = serve_state(request).config.serve
    if settings.token is None or is_open(request.scope["path"], settings.open_endpoints):
        return
    header = request.headers.get("authorization")
    if not authorized(None if header is None else header.encode("latin-1"), settings.token):
        raise HTTPException(
            401,
            "missing or wrong bearer token (Authorization: Bearer ...)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def capped_body(request: Request) -> bytes:
    """Dependency: the raw body, read up to ``serve.max_body_bytes``; 413 as soon as it is exceeded."""
    cap = serve_state(request).config.serve.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise HTTPException(413, f"request body larger than {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise HTTPException(413, f"request body larger than {cap} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "client disconnected before the body ended") from None
    return b"".join(chunks)


RawBody = Annotated[bytes, Depends(capped_body)]


# Raised on purpose and answered by an exception handler: not "internal errors".
EXPECTED = (StarletteHTTPException, RequestValidationError, InputError, ConfigError)


class OneLineErrors(APIRoute):
    """Route class: an unexpected exception in a handler is a JSON 500 naming its type, and one log
    line (its traceback at -vv), instead of Starlette's re-raise to uvicorn's traceback."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except EXPECTED:
                raise
            except Exception as exc:
                log.error(
                    "internal error on %s %s: %s: %s",
                    request.method,
                    request.url.path,
                    type(exc).__name__,
                    one_line(exc),
                )
                log.debug("internal error", exc_info=exc)
                return error(500, f"internal error: {type(exc).__name__}")

        return guarded


async def input_error(_: Request, exc: Exception) -> Response:
    return error(422, str(exc))


async def config_error(_: Request, exc: Exception) -> Response:
    """Only ranking reads config values it can refuse (rank.weights), hence the log line's prefix."""
    log.error("rank: configuration problem: %s", exc)
    return error(500, f"configuration problem: {exc}")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(InputError, input_error)
    app.add_exception_handler(ConfigError, config_error)


class RequestMetrics:
    """ASGI middleware: every answer counted by route template, method and status, with its latency."""

    def __init__(self, app: ASGIApp, state: ServeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # nothing sent: the connection broke inside the app

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            label = route.path if isinstance(route, APIRoute) else "other"
            self.state.requests.observe(label, scope["method"], status, time.perf_counter() - started)
