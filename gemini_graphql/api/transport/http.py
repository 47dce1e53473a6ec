"""GraphQL over HTTP (the GraphQL-over-HTTP spec), executed on graphql-core directly.

Strawberry's HTTP view runs a pipeline of adapters for every request that costs more than
our authentication and data access together (bench/ compares the two on every run). Here
a request is a cached document lookup and one `execute` with Strawberry's own execution
context, so resolvers see exactly what they see over the websocket (which runs the same
way). The schema's extensions, when it has any, run around that (`extensions.py`); the
GraphiQL page and its files are `graphiql.py`'s.
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache
from typing import Any

import strawberry
from graphql import ExecutionResult, OperationType
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gemini_graphql.api.context import Context
from gemini_graphql.api.errors import (
    BAD_REQUEST,
    INTERNAL_SERVER_ERROR,
    MASKED_MESSAGE,
    SERVICE_UNAVAILABLE,
    UNAVAILABLE_MESSAGE,
    apply_error_policy,
)
from gemini_graphql.api.transport.documents import Documents, Prepared
from gemini_graphql.api.transport.execution import GraphQLParams, InvalidParams, run
from gemini_graphql.api.transport.extensions import Refused, SchemaHooks
from gemini_graphql.api.transport.operation_metrics import OperationMetrics, count_errors
from gemini_graphql.api.transport.response_cache import response_key
from gemini_graphql.api.transport.strawberry_seams import graphql_schema
from gemini_graphql.chat.quota import utc_day
from gemini_graphql.infra.outages import RETRY_AFTER_SECONDS, is_outage
from gemini_graphql.metrics import CACHE_LOOKUPS

log = logging.getLogger(__name__)
GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode  # made once
_MEDIA_TYPES = {
    GRAPHQL_RESPONSE_JSON: GRAPHQL_RESPONSE_JSON,
    JSON: JSON,
    "application/*": JSON,
    "*/*": JSON,
}
_RESPONSE_CACHE_HIT = CACHE_LOOKUPS.labels("response", "hit")
_RESPONSE_CACHE_MISS = CACHE_LOOKUPS.labels("response", "miss")


class BadRequest(Exception):
    """A request that is not a GraphQL request at all (400 with either media type)."""


class GraphQLOverHTTP:
    """The /graphql endpoint for GET and POST; `ide` serves browsers asking for a page."""

    def __init__(
        self,
        schema: strawberry.Schema,
        documents: Documents,
        hooks: SchemaHooks | None,
        *,
        ide: ASGIApp,
        metrics: OperationMetrics,
    ) -> None:
        self._schema = graphql_schema(schema)
        self._documents = documents
        self._hooks = hooks
        self._ide = ide
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        accept = request.headers.get("accept")
        wants_page = accept is not None and "text/html" in accept
        if request.method == "GET" and wants_page and "query" not in request.query_params:
            await self._ide(scope, receive, send)
            return
        response = await self._respond(request, accept)
        await response(scope, receive, send)

    async def _respond(self, request: Request, accept: str | None) -> Response:
        if request.method == "POST":
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != JSON:
                return _text("POST bodies must be application/json.", 415)
        media_type = negotiate(accept)
        if media_type is None:
            return _text(f"Acceptable response types: {GRAPHQL_RESPONSE_JSON}, {JSON}.", 406)
        started = time.perf_counter()
        try:
            params = await _read_params(request)
        except BadRequest as error:
            self._metrics.series(None).count.inc()
            return _json({"errors": [_bad_request(str(error))]}, media_type, 400)
        # Past the body (whose failures the middleware answers): nothing escapes as a bare 500.
        try:
            response = await self._answer(request, params, media_type)
        except Exception as exc:  # noqa: BLE001 - answered as JSON: the connection stays usable
            response = _failure_response(exc, request, media_type)
        series = self._metrics.series(params)
        series.count.inc()
        series.duration.observe(time.perf_counter() - started)
        return response

    async def _answer(self, request: Request, params: GraphQLParams, media_type: str) -> Response:
        if self._hooks is not None:
            return await self._answer_with_hooks(self._hooks, request, params, media_type)
        prepared = self._documents.prepare(params.query)
        if prepared.errors:
            return _request_errors(list(prepared.errors), media_type)
        operation_type = prepared.operation_type(params.operation_name)
        try:
            _allow(request.method, operation_type)
        except _Refusal as refusal:
            return refusal.response(media_type)

        context = Context.of(request)
        if prepared.user_state_only and operation_type is OperationType.QUERY:
            return await self._user_state_query(prepared, params, context, media_type)
        result = await self._execute(prepared, params, context)
        return _execution_response(result, context.request_id, media_type)

    async def _answer_with_hooks(
        self, hooks: SchemaHooks, request: Request, params: GraphQLParams, media_type: str
    ) -> Response:
        """Every operation through the extensions' hooks (and executed, never answered from
        the response cache: the extensions see each one)."""
        context = Context.of(request)
        try:
            hooked = await hooks.execute(
                params, context, allow=lambda kind: _allow(request.method, kind)
            )
        except _Refusal as refusal:
            return refusal.response(media_type)
        return _result_response(hooked.result, media_type, unavailable=hooked.unavailable)

    async def _user_state_query(
        self, prepared: Prepared, params: GraphQLParams, context: Context, media_type: str
    ) -> Response:
        """A query reading only the user's own row and rooms: answered from the user's
        cached responses when one is there (see response_cache)."""
        resources = context.services.resources
        ticket = resources.users.ticket()  # before the user row is read
        try:
            user = await context.user()
        except Exception:  # noqa: BLE001 - executing reports it (UNAUTHENTICATED, or masked)
            user = None
        if user is None:
            result = await self._execute(prepared, params, context)
            return _execution_response(result, context.request_id, media_type)
        day = utc_day(resources.clock())
        key = response_key(params.query, params.operation_name, params.variables, day)
        body = resources.users.response(user.id, key)
        if body is not None:
            _RESPONSE_CACHE_HIT.inc()
        else:
            _RESPONSE_CACHE_MISS.inc()
            result = await self._execute(prepared, params, context)
            if result.errors:
                return _execution_response(result, context.request_id, media_type)
            body = _encode({"data": result.data}).encode()
            resources.users.keep_response(user.id, key, body, ticket)
        return _body_response(body, media_type, 200)

    async def _execute(
        self, prepared: Prepared, params: GraphQLParams, context: Context
    ) -> ExecutionResult:
        document = prepared.document
        assert document is not None
        return await run(
            self._schema,
            document,
            context,
            params.variables,
            params.operation_name,
            hide_suggestions=self._documents.hide_suggestions,
        )


@lru_cache(maxsize=256)  # clients send a handful of distinct Accept headers
def negotiate(accept: str | None) -> str | None:
    """The response media type for an Accept header; None when neither is acceptable."""
    if not accept:
        return JSON
    best: tuple[float, int, str] | None = None
    for position, part in enumerate(accept.split(",")):
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        candidate = _MEDIA_TYPES.get(media.lower())
        if candidate and quality > 0 and (best is None or (quality, -position) > best[:2]):
            best = (quality, -position, candidate)
    return best[2] if best else None


async def _read_params(request: Request) -> GraphQLParams:
    if request.method == "POST":
        try:
            body = json.loads(await _body(request))
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("The request body is not valid JSON.") from None
        except RecursionError:
            raise BadRequest("The request body nests too deeply.") from None
        if isinstance(body, list):
            raise BadRequest("Batched requests are not supported; send one operation per request.")
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        query, variables, operation_name = (
            body.get("query"),
            body.get("variables"),
            body.get("operationName"),
        )
    else:
        query_params = request.query_params
        query, operation_name = query_params.get("query"), query_params.get("operationName")
        variables = query_params.get("variables")
        if variables is not None:
            try:
                variables = json.loads(variables)
            except ValueError:
                raise BadRequest("`variables` is not valid JSON.") from None
            except RecursionError:
                raise BadRequest("`variables` nests too deeply.") from None
    try:
        return GraphQLParams.of(query, variables, operation_name)
    except InvalidParams as error:
        raise BadRequest(str(error)) from None


async def _body(request: Request) -> bytes:
    """The whole body (Starlette's `Request.body` goes through an async generator per chunk)."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("The client went away before sending the whole body.")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class _Refusal(Refused):
    """An operation type this method does not serve."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status  # a plain-text answer with this status, else request errors

    def response(self, media_type: str) -> Response:
        if self.status is None:
            return _request_errors([_bad_request(self.message)], media_type)
        response = _text(self.message, self.status)
        response.headers["allow"] = "POST"
        return response


def _allow(method: str, operation_type: OperationType | None) -> None:
    """Raises _Refusal for what HTTP does not serve: mutations over GET, subscriptions."""
    if method != "POST" and operation_type not in (OperationType.QUERY, None):
        raise _Refusal("Only queries can be sent with GET; use POST.", status=405)
    if operation_type is OperationType.SUBSCRIPTION:
        raise _Refusal("Subscriptions are served over a websocket (graphql-transport-ws) here.")


def _execution_response(result: ExecutionResult, request_id: str, media_type: str) -> Response:
    if not result.errors:
        return _json({"data": result.data}, media_type, 200)
    unavailable = apply_error_policy(result.errors, request_id)
    return _result_response(result, media_type, unavailable=unavailable)


def _result_response(result: ExecutionResult, media_type: str, *, unavailable: bool) -> Response:
    """`result` with the error policy already applied."""
    payload: dict[str, Any] = {"data": result.data}
    if result.errors:
        payload["errors"] = [error.formatted for error in result.errors]
    if result.extensions:
        payload["extensions"] = result.extensions
    if result.errors and result.data is None and all(not error.path for error in result.errors):
        del payload["data"]  # e.g. variables: nothing was executed
        response = _request_errors_payload(payload, media_type)
    else:
        response = _json(payload, media_type, 200)
    if unavailable:
        response.headers["retry-after"] = str(RETRY_AFTER_SECONDS)
    return response


def _failure_response(exc: Exception, request: Request, media_type: str) -> Response:
    """What escaped execution (a dependency down outside a resolver, or a bug): a GraphQL
    error with a code, never Starlette's bare 500, which would also close the connection."""
    request_id = request.scope.get("state", {}).get("request_id")
    if is_outage(exc):
        log.warning("dependency unavailable (request %s): %s", request_id, type(exc).__name__)
        error = {
            "message": UNAVAILABLE_MESSAGE,
            "extensions": {
                "code": SERVICE_UNAVAILABLE,
                "retryAfter": RETRY_AFTER_SECONDS,
                "requestId": request_id,
            },
        }
        response = _json({"errors": [error]}, media_type, 503)
        response.headers["retry-after"] = str(RETRY_AFTER_SECONDS)
        return response
    log.error("unexpected error (request %s)", request_id, exc_info=exc)
    error = {
        "message": MASKED_MESSAGE,
        "extensions": {"code": INTERNAL_SERVER_ERROR, "requestId": request_id},
    }
    return _json({"errors": [error]}, media_type, 500)


def _request_errors(errors: list[dict[str, Any]], media_type: str) -> Response:
    return _request_errors_payload({"errors": errors}, media_type)


def _request_errors_payload(payload: dict[str, Any], media_type: str) -> Response:
    """The spec: no `data`; 400 with the new media type, 200 with plain JSON (legacy clients)."""
    status = 400 if media_type == GRAPHQL_RESPONSE_JSON else 200
    return _json(payload, media_type, status)


def _bad_request(message: str) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": BAD_REQUEST}}


def _json(payload: dict[str, Any], media_type: str, status: int) -> Response:
    """Every JSON answer but a cached one (which holds no errors) is made here."""
    if "errors" in payload:
        count_errors(payload["errors"])
    return _body_response(_encode(payload).encode(), media_type, status)


def _body_response(body: bytes, media_type: str, status: int) -> Response:
    return Response(body, status, media_type=f"{media_type}; charset=utf-8")


def _text(message: str, status: int) -> Response:
    return Response(message, status, media_type="text/plain; charset=utf-8")
