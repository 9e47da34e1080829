"""Request size limits, enforced while the body is read: before FastAPI parses it and before the
caller is authenticated.

FastAPI reads and parses a JSON body before any dependency runs, so a size check in a route or
a dependency comes after the body is in memory. This ASGI middleware runs first: a declared
Content-Length over the route's limit is answered 413 at once, without reading a byte of the
body; a body without one (chunked) is counted as it is received, and the read that passes the
limit raises 413 instead of handing the bytes on.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contrail.service.errors import ApiError

# Routes with their own limit (an upload); every other route has the general one.
UPLOAD_PATH = "/v1/files"


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        *,
        limit_for: Callable[[str, str], int],
        answer: Callable[[int, str], Response],
    ) -> None:
        self.app = app
        self.limit_for = limit_for  # (method, path) -> bytes
        self.answer = answer  # (status, message) -> the error response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None:
            if not declared.isdigit():
                await self.answer(400, "Content-Length is not a number")(scope, receive, send)
                return
            if int(declared) > limit:
                message = f"body of {declared} bytes exceeds this route's limit of {limit} bytes"
                await self.answer(413, message)(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, f"body exceeds this route's limit of {limit} bytes")
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return str(value.decode("latin-1").strip())
    return None
