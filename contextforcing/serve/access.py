"""Who may use the viewer: an allow-list of Host names (every request) and of page Origins (WebSockets).

A browser lets any web page open a WebSocket to any address, the user's own machine included, and tells the
server which page it came from in the Origin header; a page can also reach a local server under its own domain
name by pointing that name at 127.0.0.1 (DNS rebinding), which shows in the Host header. So the server answers
only requests whose Host is one of its names (by default the localhost names and the address it is bound to),
and opens a stream only for its own page (an Origin equal to the Host asked for) or an Origin the user allowed.
A client that sends no Origin is not a browser page (a script, a test client), so no page can be behind it.
`contextforcing serve --allow-host NAME --allow-origin URL` widens the lists for remote use; `*` allows any.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from contextforcing.errors import UserError, quote

log = logging.getLogger("contextforcing.serve")

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")  # listening on every interface: no one name to allow
ANY = "*"
POLICY_VIOLATION = 1008  # the WebSocket close code for a refused connection (RFC 6455, 7.4.1)


def host_name(host: str) -> str:
    """The name part of a Host header or an address, lower-case: `[::1]:7860` -> `::1`, `a.b:80` -> `a.b`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, lower-case, as browsers send it in the Origin header."""
    parts = urlsplit(url.strip().lower())
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class AccessRules:
    """The Host names the server answers and the page Origins it opens streams for (besides its own page)."""

    hosts: tuple[str, ...] = LOCAL_NAMES
    origins: tuple[str, ...] = ()

    @classmethod
    def for_address(cls, address: str, hosts=(), origins=()) -> "AccessRules":
        """The localhost names and `address` (unless it is a wildcard), plus what the user allowed."""
        own = () if address in WILDCARD_ADDRESSES else (host_name(address),)
        for origin in origins:
            if origin != ANY and urlsplit(origin).scheme not in ("http", "https"):
                raise UserError(f"--allow-origin {quote(origin)} must look like http://HOST[:PORT] (or * for any)")
        return cls(
            tuple(dict.fromkeys((*LOCAL_NAMES, *own, *(ANY if h == ANY else host_name(h) for h in hosts)))),
            tuple(dict.fromkeys(ANY if o == ANY else origin_of(o) for o in origins)),
        )

    def refusal(self, host: str | None, origin: str | None) -> str | None:
        """Why a request with these headers is refused (None: it is allowed). `origin`: WebSockets only."""
        if ANY not in self.hosts and (host is None or host_name(host) not in self.hosts):
            return f"Host {quote(host or '')} is not one of this server's names (serve --allow-host NAME adds one)"
        if origin is None or ANY in self.origins:
            return None
        parts = urlsplit(origin.lower())
        if parts.scheme in ("http", "https") and host is not None and parts.netloc == host.strip().lower():
            return None  # the server's own page
        if origin_of(origin) in self.origins:
            return None
        return f"Origin {quote(origin)} is not this server's page (serve --allow-origin URL allows another)"


class AccessCheck:
    """ASGI middleware: requests and WebSockets that `AccessRules` refuses get 403 before the app sees them."""

    def __init__(self, app: ASGIApp, rules: AccessRules):
        self.app, self.rules = app, rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin") if scope["type"] == "websocket" else None
        problem = self.rules.refusal(headers.get("host"), origin)
        if problem is None:
            await self.app(scope, receive, send)
            return
        log.warning("refused %s %s: %s", scope["type"], scope.get("path", ""), problem)
        if scope["type"] == "websocket":  # closing before accepting is an HTTP 403 to the client
            await send({"type": "websocket.close", "code": POLICY_VIOLATION})
        else:
            await PlainTextResponse(problem, status_code=403)(scope, receive, send)
