"""The HTTP application of ``metasched serve`` (FastAPI on uvicorn; imported only by ``serve``).

Request bodies are read raw and handed to the same ``metasched.rank.rank`` the CLI calls, so the
answers match in content; no pydantic model sits in the hot path (it would cost more than ranking).
Status, metrics and health read the store on a small thread pool; ranking see RANK_THREADS_POSTGRES.
Authentication, the body cap, the request metrics and internal errors are one plain ASGI middleware.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from metasched.domain.destination import DestinationSummary
from metasched.domain.errors import ConfigError, InputError
from metasched.serve.auth import authorized
from metasched.serve.metrics import render
from metasched.serve.state import ServeState
from metasched.store.reconcile import calibration

log = logging.getLogger("metasched.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHandler = Callable[[bytes], Awaitable[tuple[int, bytes]]]  # body -> (status, JSON answer)

# Where ranking runs. On SQLite a request is CPU-bound Python (store reads are cached until the file
# changes; a miss reads local pages): a worker thread cannot run it in parallel (GIL) and the hand-over
# measured 35 % more CPU per request, so it runs on the event loop. PostgreSQL reads wait on the
# network, so there ranking goes to a few threads and the loop stays free.
RANK_THREADS_POSTGRES = 4
OTHER_THREADS = 2  # status, metrics, health: never queued behind ranking
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KNOWN_PATHS = frozenset(
    {"/v1/rank", "/process_data", "/v1/status", "/healthz", "/metrics", "/docs", "/openapi.json", "/ping"}
    | {"/v1/policy"}
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

SCHEMAS = {"RankRequest": "rank-request.json", "RankResponse": "rank-response.json"}


def _openapi_components() -> dict[str, Any]:
    """The rank contract's own JSON Schemas (metasched/schemas) as OpenAPI components: one source for
    the CLI docs and /docs. Their ``$defs`` become components too, since a ``#/$defs/...`` reference
    inside the OpenAPI document would resolve against the document's root."""
    from importlib.resources import files

    components: dict[str, Any] = {}
    for name, file in SCHEMAS.items():
        text = files("metasched").joinpath("schemas", file).read_text(encoding="utf-8")
        schema = json.loads(text.replace('"#/$defs/', f'"#/components/schemas/{name}_'))
        for key in ("$schema", "$id"):
            schema.pop(key, None)
        for def_name, definition in schema.pop("$defs", {}).items():
            components[f"{name}_{def_name}"] = definition
        components[name] = schema
    return components


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, allow_nan=False), status_code=status, media_type="application/json", headers=headers
    )


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"detail": detail}, headers)


class Gate:
    """ASGI middleware: request metrics and the answer to an unexpected exception (a JSON 500 and one
    log line) around everything, then the bearer token, then the body cap.

    The body is read here (at most the cap plus one chunk) and replayed to the app, so an oversized
    or endless body is refused with 413 before anything parses it. POSTs to ``raw`` paths (ranking)
    are answered here from that body: FastAPI's routing, dependency solving and response classes
    cost several times what /ping costs in all, per request; their FastAPI routes remain for /docs
    and for other methods' 405.
    """

    def __init__(self, app: ASGIApp, state: ServeState, raw: dict[str, RawHandler]) -> None:
        self.app = app
        self.state = state
        self.raw = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        status = [0]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._gate(scope, receive, send_status, path)
        except Exception as exc:
            # Handled here, not by Starlette's ServerErrorMiddleware: that one re-raises to uvicorn,
            # which logs "Exception in ASGI application" and a long traceback. One line per event.
            log.error(
                "internal error on %s %s: %s: %s", scope["method"], path, type(exc).__name__, _one_line(exc)
            )
            log.debug("internal error", exc_info=exc)  # the traceback with -vv
            if status[0] == 0:
                await _error(500, f"internal error: {type(exc).__name__}")(scope, receive, send_status)
        finally:
            status[0] = status[0] or 500
            label = _path_label(path)
            self.state.requests.observe(label, scope["method"], status[0], time.perf_counter() - started)

    async def _gate(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        settings = self.state.config.serve
        if settings.token is not None and not _is_open(path, settings.open_endpoints):
            header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if not authorized(header, settings.token):
                response = _error(
                    401,
                    "missing or wrong bearer token (Authorization: Bearer ...)",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        cap = settings.max_body_bytes
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > cap:
            await _error(413, f"request body larger than {cap} bytes")(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                await _error(413, f"request body larger than {cap} bytes")(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        handler = self.raw.get(path) if scope["method"] == "POST" else None
        if handler is not None:
            status, payload = await handler(body)
            headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _path_label(path: str) -> str:
    """The metrics label: known routes by their template, anything else lumped (ids would explode it)."""
    if path in KNOWN_PATHS:
        return path
    if path.startswith("/v1/status/"):
        return "/v1/status/{destination}"
    return "other"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_open(path: str, open_endpoints: tuple[str, ...]) -> bool:
    """An open endpoint opens what lies under it too: /v1/status/{id}, /docs/oauth2-redirect."""
    if path in open_endpoints:
        return True
    return any(path.startswith(f"{e}/") for e in ("/v1/status", "/docs") if e in open_endpoints)


def create_app(state: ServeState) -> FastAPI:
    """The application; ``state`` carries config, store and collect loop (started in the lifespan)."""
    rank_pool = (
        ThreadPoolExecutor(max_workers=RANK_THREADS_POSTGRES, thread_name_prefix="rank")
        if state.store.is_postgres
        else None
    )
    pool = ThreadPoolExecutor(max_workers=OTHER_THREADS, thread_name_prefix="read")

    async def in_pool(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    async def ranked(body: bytes, full: bool) -> tuple[int, bytes]:
        if rank_pool is None:
            return _rank(state, body, full=full)
        return await asyncio.get_running_loop().run_in_executor(
            rank_pool, lambda: _rank(state, body, full=full)
        )

    async def rank_full(body: bytes) -> tuple[int, bytes]:
        return await ranked(body, True)

    async def rank_ids(body: bytes) -> tuple[int, bytes]:
        return await ranked(body, False)

    def answer(status_payload: tuple[int, bytes]) -> Response:
        status, payload = status_payload
        return Response(payload, status_code=status, media_type="application/json")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.start()
        log.info("collect loop %s", "started" if state.loop is not None else "off (--no-collect)")
        try:
            yield
        finally:
            log.info("shutting down: waiting for a running collect to finish")
            await asyncio.get_running_loop().run_in_executor(None, state.stop)
            if rank_pool is not None:
                rank_pool.shutdown(wait=True)
            pool.shutdown(wait=True)
            log.info("stopped")

    app = FastAPI(
        title="metasched",
        summary="Rank TPV destinations by expected turnaround, from collected cluster state.",
        version=_version(),
        lifespan=lifespan,
        redoc_url=None,
    )

    rank_body: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RankRequest"}}},
        },
        "responses": {
            "200": {
                "description": "Ranked destinations",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RankResponse"}}},
            },
            "422": {"description": "Invalid request: `detail` names the field"},
        },
    }

    @app.post("/v1/rank", openapi_extra=rank_body, tags=["rank"])
    async def rank_v1(request: Request) -> Response:
        """Rank candidate destinations (the answer of `metasched rank` for the same request and state)."""
        return answer(await rank_full(await request.body()))  # Gate answers POSTs first

    seed_answer = {
        "type": "object",
        "properties": {"sorted_destinations": {"type": "array", "items": {"type": "string"}}},
    }
    seed_body = {
        **rank_body,
        "responses": {
            **rank_body["responses"],
            "200": {
                "description": "Ids, best first",
                "content": {"application/json": {"schema": seed_answer}},
            },
        },
    }

    @app.post("/process_data", openapi_extra=seed_body, tags=["rank"])
    async def process_data(request: Request) -> Response:
        """Seed-1 compatible: the same ranking, answered as `{"sorted_destinations": [...]}`."""
        return answer(await rank_ids(await request.body()))  # Gate answers POSTs first

    @app.get("/v1/status", tags=["status"])
    async def status_all() -> Response:
        """Every destination as `metasched status --json` shows it."""
        rows = await in_pool(lambda: _status(state, None))
        return _json(200, rows)

    @app.get("/v1/status/{destination}", tags=["status"])
    async def status_one(destination: str) -> Response:
        """One destination with its nodes and partitions (`metasched status DEST --json`)."""
        detail = await in_pool(lambda: _status(state, destination))
        if detail is None:
            return _error(404, f"destination: no destination {destination!r}")
        return _json(200, detail)

    @app.get("/v1/policy", tags=["policy"])
    async def policy_show() -> Response:
        """Every node group's active policy and recent renice actions (`metasched policy show --json`)."""
        from metasched.app.admin import show

        return _json(200, await in_pool(lambda: show(state.config, state.store)))

    @app.put("/v1/policy", tags=["policy"])
    async def policy_set(request: Request) -> Response:
        """Switch a node group's policy: `{"name", "group", "high_priority"}` (docs/policies.md)."""
        from metasched.app.admin import put

        body, client = await request.body(), request.client.host if request.client else "unknown"
        status, answer = await in_pool(lambda: put(state.config, state.store, body, client))
        return _json(status, answer)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> Response:
        """200 when the store is readable and the collect loop alive; 503 with the reason otherwise."""
        reason = await in_pool(state.health)
        if reason is None:
            return _json(200, {"status": "ok"})
        return _json(503, {"status": "unavailable", "reason": reason})

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        """Prometheus text format."""
        text = await in_pool(lambda: _metrics(state))
        return PlainTextResponse(text, media_type=METRICS_CONTENT_TYPE)

    @app.get("/ping", tags=["operations"], include_in_schema=False)
    async def ping() -> Response:
        """Trivial answer without store or thread pool: the baseline of the benchmark."""
        return Response(b'{"pong":true}', media_type="application/json")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            spec.setdefault("components", {}).setdefault("schemas", {}).update(_openapi_components())
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(Gate, state=state, raw={"/v1/rank": rank_full, "/process_data": rank_ids})
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metasched")
    except PackageNotFoundError:
        return "0"


def _rank(state: ServeState, body: bytes, *, full: bool) -> tuple[int, bytes]:
    """(status, JSON body) for a rank request; InputError is the client's fault (422), nothing else is."""
    from metasched.app.ranking import rank

    try:
        result = rank(_decode(body), state.config, state.store, datetime.now(UTC))
    except InputError as exc:
        return 422, json.dumps({"detail": str(exc)}).encode()
    except ConfigError as exc:
        log.error("rank: configuration problem: %s", exc)
        return 500, json.dumps({"detail": f"configuration problem: {exc}"}).encode()
    answer = result if full else {"sorted_destinations": result["sorted_destinations"]}
    # orjson: the same compact JSON as json.dumps(separators=(",", ":")) (UTF-8 instead of \\u escapes)
    # in a fifth of the time; rank caps every number finite, so orjson's NaN-as-null never applies.
    return 200, orjson.dumps(answer)


def _decode(body: bytes) -> object:
    """The request's JSON value: orjson (5x faster) for what it accepts, which is strict JSON that
    json.loads reads as the same objects; anything else (NaN, lone surrogates, huge integers, a BOM,
    bad bytes, too deep, too big) goes to rank's own decoder, which accepts or words the 422."""
    from metasched.rank.request import MAX_REQUEST_BYTES, decode_request

    if len(body) <= MAX_REQUEST_BYTES:
        try:
            value: object = orjson.loads(body)
            return value
        except orjson.JSONDecodeError:
            pass
    return decode_request(body)


def _status(state: ServeState, destination: str | None) -> Any:
    from metasched.app.status import destination_detail, status_report

    now = datetime.now(UTC)
    if destination is None:
        return status_report(state.config, state.store, now)
    return destination_detail(state.config, state.store, destination, now)


def _metrics(state: ServeState) -> str:
    """The page degrades instead of failing: a store problem drops the destination series, and
    ``metasched_store_up`` says why they are missing."""
    summaries: list[DestinationSummary] = []
    ledger = {}
    store_up = True
    try:
        summaries = state.store.summaries()
        state.runs.update(state.store)
        configured = [d.id for d in state.config.destinations]  # also those not collected yet
        ledger = calibration(state.store, list(dict.fromkeys([*configured, *(s.id for s in summaries)])))
    except Exception as exc:
        log.warning("metrics: store read failed: %s: %s", type(exc).__name__, _one_line(exc))
        store_up = False
    return render(
        summaries,
        state.runs.latest(),
        state.runs.errors(),
        state.loop_stats(),
        state.requests,
        datetime.now(UTC),
        store_up=store_up,
        ledger=ledger,
    )
