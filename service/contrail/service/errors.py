"""API errors: every 4xx/5xx body is an `ErrorResponse`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException

from contrail.client.types import ErrorDetail, ErrorResponse

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limit",
    503: "unavailable",
}


class ApiError(HTTPException):
    """An HTTP error with a type, a message and optional line/field details."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str | None = None,
        details: list[ErrorDetail] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=dict(headers or {}))
        self.type = type or ERROR_TYPES.get(status_code, "server_error")
        self.message = message
        self.details = details or []


def error_body(
    status: int, message: str, type: str | None = None, details: list[ErrorDetail] | None = None
) -> dict[str, Any]:
    return ErrorResponse.model_validate(
        {
            "error": {
                "type": type or ERROR_TYPES.get(status, "server_error"),
                "message": message,
                "details": [d.model_dump() for d in details or []],
            }
        }
    ).model_dump()


# OpenAPI `responses` for routes: every error answers an ErrorResponse.
def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse} for c in codes}
