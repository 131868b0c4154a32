"""A demo MCP server (the official SDK's ``MCPServer``, formerly FastMCP) over
streamable HTTP that refuses every request without the right ``X-API-Key``: the
legacy-style credential ``agent-sts shim`` injects. Used by ``test_mcp_e2e.py``.

Tools:
- ``count(n)``: reports progress ``n`` times, 0.2 s apart, then answers; over
  streamable HTTP the progress notifications and the result travel as one SSE stream.
- ``whoami()``: answers with the API key it received (a server that echoes its
  credential, which the shim must scrub), also sent ahead in a progress message.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any, Awaitable, Callable, Dict

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

Scope = Dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def build_app(api_key: str) -> ASGIApp:
    server = MCPServer("agent-sts demo")

    @server.tool()
    async def count(n: int, ctx: Context) -> str:
        """Counts to n, reporting progress on the way."""
        for i in range(1, n + 1):
            await asyncio.sleep(0.2)
            await ctx.report_progress(i, n, f"step {i}")
        return f"counted to {n}"

    @server.tool()
    async def whoami(ctx: Context) -> str:
        """Answers with the API key this server received."""
        headers = ctx.headers or {}
        key = headers.get("x-api-key", "")
        await ctx.report_progress(1, 2, f"request carried x-api-key={key}")
        await asyncio.sleep(0.1)
        return f"my api key is {key}"

    inner = server.streamable_http_app(
        stateless_http=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            sent = dict(scope.get("headers") or [])
            if sent.get(b"x-api-key", b"").decode("latin-1") != api_key:
                body = json.dumps({"error": "missing or wrong API key"}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await inner(scope, receive, send)

    return app


class Running:
    """The server on a loopback port, in a thread of its own."""

    def __init__(self, api_key: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(build_app(api_key), log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Running":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
