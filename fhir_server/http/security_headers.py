"""Headers every HTTP response carries unless its route set its own: ``Cache-Control:
no-store``, since nearly every answer here holds patient data that no browser or
proxy cache should keep (a shared reading-room workstation's disk cache least of all;
routes that may be cached say so, e.g. the JWKS, or revalidated, e.g. DICOMweb
metadata with its ETag), and ``X-Content-Type-Options: nosniff``, so that no browser
reads a stored document or image as another type than the one declared.

A plain ASGI middleware, like ``metrics``: it adds to the response's start message
and touches nothing else."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))


class SecurityHeaders:
    """Adds ``DEFAULT_HEADERS`` a response lacks."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [h for h in DEFAULT_HEADERS if h[0] not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)
