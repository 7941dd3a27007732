"""The HTTP application of ``metasched serve`` (FastAPI on uvicorn; imported only by ``serve``).

Routing, the bearer token (a dependency of every route), the body cap (the body dependency), error
answers (exception handlers and the route class) are FastAPI's own mechanisms, in serve.http. The rank
routes take the raw body and hand it to the same ``metasched.rank.rank`` the CLI calls, which decodes
and validates it with msgspec in one pass; the answer is encoded once and sent as it is. No pydantic
model sits in the hot path (validating through it would cost more than ranking).
Status, metrics and health read the store on a small thread pool; ranking see RANK_THREADS_POSTGRES.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from metasched.app.admin import put as policy_put
from metasched.app.admin import show as policy_show
from metasched.app.ranking import rank
from metasched.app.status import destination_detail, status_report
from metasched.domain.destination import DestinationSummary
from metasched.serve.cache import CachingStore
from metasched.serve.http import (
    OneLineErrors,
    RawBody,
    RequestMetrics,
    install_handlers,
    one_line,
    require_token,
)
from metasched.serve.metrics import render
from metasched.serve.state import ServeState
from metasched.store.reconcile import calibration

log = logging.getLogger("metasched.serve")

# Where ranking runs. On SQLite a request is CPU-bound Python (store reads are cached until the file
# changes; a miss reads local pages): a worker thread cannot run it in parallel (GIL) and the hand-over
# costs more CPU per request, so it runs on the event loop. PostgreSQL reads wait on the network, so
# there ranking goes to a few threads and the loop stays free.
RANK_THREADS_POSTGRES = 4
OTHER_THREADS = 2  # status, metrics, health: never queued behind ranking
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCHEMAS = {"RankRequest": "rank-request.json", "RankResponse": "rank-response.json"}
JSON = "application/json"


def _openapi_components() -> dict[str, Any]:
    """The rank contract's own JSON Schemas (metasched/schemas) as OpenAPI components: one source for
    the CLI docs and /docs. Their ``$defs`` become components too, since a ``#/$defs/...`` reference
    inside the OpenAPI document would resolve against the document's root."""
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


RANK_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/RankRequest"}}},
    },
    "responses": {
        "200": {
            "description": "Ranked destinations",
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/RankResponse"}}},
        },
        "422": {"description": "Invalid request: `detail` names the field"},
    },
}
SEED_DOC: dict[str, Any] = {
    **RANK_DOC,
    "responses": {
        **RANK_DOC["responses"],
        "200": {
            "description": "Ids, best first",
            "content": {
                JSON: {
                    "schema": {
                        "type": "object",
                        "properties": {"sorted_destinations": {"type": "array", "items": {"type": "string"}}},
                    }
                }
            },
        },
    },
}


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

    async def ranked(body: bytes, full: bool) -> Response:
        if rank_pool is None:
            payload = _rank(state, body, full=full)
        else:
            loop = asyncio.get_running_loop()
            payload = await loop.run_in_executor(rank_pool, lambda: _rank(state, body, full=full))
        return Response(payload, media_type=JSON)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.start()
        log.info("collect loop %s", _loop_where(state))
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
        dependencies=[Depends(require_token)],
        docs_url=None,  # served below as routes, so the token dependency covers them too
        redoc_url=None,
        openapi_url=None,
    )
    app.state.serve = state
    app.router.route_class = OneLineErrors
    install_handlers(app)

    @app.post("/v1/rank", openapi_extra=RANK_DOC, tags=["rank"])
    async def rank_v1(body: RawBody) -> Response:
        """Rank candidate destinations (the answer of `metasched rank` for the same request and state)."""
        return await ranked(body, True)

    @app.post("/process_data", openapi_extra=SEED_DOC, tags=["rank"])
    async def process_data(body: RawBody) -> Response:
        """Seed-1 compatible: the same ranking, answered as `{"sorted_destinations": [...]}`."""
        return await ranked(body, False)

    @app.get("/v1/status", tags=["status"])
    async def status_all() -> Response:
        """Every destination as `metasched status --json` shows it."""
        return JSONResponse(await in_pool(lambda: _status(state, None)))

    @app.get("/v1/status/{destination}", tags=["status"])
    async def status_one(destination: str) -> Response:
        """One destination with its nodes and partitions (`metasched status DEST --json`)."""
        detail = await in_pool(lambda: _status(state, destination))
        if detail is None:
            raise HTTPException(404, f"destination: no destination {destination!r}")
        return JSONResponse(detail)

    @app.get("/v1/policy", tags=["policy"])
    async def policy_get() -> Response:
        """Every node group's active policy and recent renice actions (`metasched policy show --json`)."""
        return JSONResponse(await in_pool(lambda: policy_show(state.config, state.store)))

    @app.put("/v1/policy", tags=["policy"])
    async def policy_set(request: Request, body: RawBody) -> Response:
        """Switch a node group's policy: `{"name", "group", "high_priority"}` (docs/policies.md)."""
        client = request.client.host if request.client else "unknown"
        status, answer = await in_pool(lambda: policy_put(state.config, state.store, body, client))
        return JSONResponse(answer, status_code=status)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> Response:
        """200 when the store is readable and the collect loop alive; 503 with the reason otherwise."""
        reason = await in_pool(state.health)
        if reason is None:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        """Prometheus text format."""
        text = await in_pool(lambda: _metrics(state))
        return PlainTextResponse(text, media_type=METRICS_CONTENT_TYPE)

    @app.get("/ping", tags=["operations"], include_in_schema=False)
    async def ping() -> Response:
        """Trivial answer without store or thread pool: the baseline of the benchmark."""
        return Response(b'{"pong":true}', media_type=JSON)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json() -> Response:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url="/docs/oauth2-redirect",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def docs_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            spec.setdefault("components", {}).setdefault("schemas", {}).update(_openapi_components())
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(RequestMetrics, state=state)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metasched")
    except PackageNotFoundError:
        return "0"


def _rank(state: ServeState, body: bytes, *, full: bool) -> bytes:
    """The JSON answer to a rank request; InputError (the client's 422) and ConfigError propagate to
    their exception handlers."""
    config, store = state.config, state.store
    memo = store.derived(config) if isinstance(store, CachingStore) else None
    result = rank(body, config, store, datetime.now(UTC), memo=memo)
    answer = result if full else {"sorted_destinations": result["sorted_destinations"]}
    # orjson writes the same compact JSON as json.dumps(separators=(",", ":")), UTF-8 instead of
    # \\u escapes, in a fraction of the time; rank caps every number finite, so orjson's NaN-as-null
    # never applies.
    return orjson.dumps(answer)


def _status(state: ServeState, destination: str | None) -> Any:
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
        log.warning("metrics: store read failed: %s: %s", type(exc).__name__, one_line(exc))
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
        peers=state.peers.requests() if state.peers is not None else (),
    )


def _loop_where(state: ServeState) -> str:
    if state.loop is not None:
        return "started"
    if state.peers is not None and state.peers.collects:
        return "runs in worker 0"
    return "off (--no-collect)"
