"""OpenAI error bodies, mapped from the router's gRPC status codes (the one place the mapping lives).

Body: `{"error": {"message", "type", "param", "code"}}`. Status and type by gRPC code:
INVALID_ARGUMENT 400 invalid_request_error; UNAUTHENTICATED 401 authentication_error (code
invalid_api_key); NOT_FOUND 404 invalid_request_error (code model_not_found); RESOURCE_EXHAUSTED 429
rate_limit_error; UNAVAILABLE 503 service_unavailable; FAILED_PRECONDITION (the model failed to load) 503
service_unavailable (code model_load_failed); DEADLINE_EXCEEDED 504; anything else 500
server_error. A body over the size limit is 413 (request_too_large), a malformed JSON body or a field of
the wrong type 400 naming the field. In a stream the same body is sent as an SSE event before `[DONE]`.
"""

from __future__ import annotations

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.router.request import RouterError

STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", None),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", None),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable", None),
    grpc.StatusCode.FAILED_PRECONDITION: (503, "service_unavailable", "model_load_failed"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout", None),
}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def from_router_error(exc: RouterError) -> tuple[int, dict]:
    status, type_, code = STATUS.get(exc.code, (500, "server_error", None))
    return status, error_body(str(exc), type_, exc.param, code or exc.code.name.lower())


def response(status: int, body: dict) -> JSONResponse:
    return JSONResponse(body, status_code=status)


async def router_error_handler(request: Request, exc: RouterError) -> JSONResponse:
    return response(*from_router_error(exc))


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """pydantic's 422 becomes OpenAI's 400, naming the first bad field."""
    first = (exc.errors() or [{}])[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid body"))
    return response(400, error_body(message, "invalid_request_error", param, "invalid_value"))
